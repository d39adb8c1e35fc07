"""What a handler gets besides its payload: the job, its attempt, a way to report progress
and a way to tell whether it should stop."""

from __future__ import annotations

import asyncio
import concurrent.futures
import dataclasses
import logging
import math
from typing import Any

from async_jobs.domain.errors import InvalidJobError
from async_jobs.domain.jobs import Job, Progress
from async_jobs.domain.validation import storable_text

MAX_PROGRESS_MESSAGE = 500


@dataclasses.dataclass(slots=True)
class JobContext:
    """Passed as the first argument of every handler call."""

    job: Job
    worker_id: str
    logger: logging.Logger
    # Set by the worker: the thread a sync handler runs in, while it runs.
    thread: concurrent.futures.Future[Any] | None = None
    _stop: asyncio.Event = dataclasses.field(default_factory=asyncio.Event)
    _cancel_requested: bool = False
    _progress: Progress | None = None

    @property
    def attempt(self) -> int:
        """1 on the first run, 2 on the first retry, and so on."""
        return self.job.attempts

    @property
    def payload(self) -> dict[str, Any]:
        return self.job.payload

    @property
    def stop_requested(self) -> bool:
        """True once the worker wants this attempt to end (shutdown, lost lease, timeout,
        cancellation).

        Long sync handlers should check it between steps; async handlers are also
        cancelled at their next ``await``.
        """
        return self._stop.is_set()

    @property
    def cancel_requested(self) -> bool:
        """True once someone asked for this job to be cancelled; the attempt then ends
        ``cancelled`` whatever the handler does next (unless it has already succeeded)."""
        return self._cancel_requested

    def request_stop(self) -> None:
        self._stop.set()

    def request_cancel(self) -> None:
        self._cancel_requested = True
        self._stop.set()

    async def progress(self, percent: float, message: str | None = None) -> None:
        """Report how far the job is (0-100) and what it is doing. Cheap to call often:
        the worker stores the latest report of each job about once a second."""
        self.set_progress(percent, message)

    def set_progress(self, percent: float, message: str | None = None) -> None:
        """``progress`` for sync handlers (safe to call from the handler's thread)."""
        if isinstance(percent, bool) or not isinstance(percent, int | float):
            raise InvalidJobError("progress percent must be a number", field="progress")
        if not math.isfinite(percent):
            raise InvalidJobError("progress percent must be finite", field="progress")
        if message is not None:
            # Cut before escaping (the work stays bounded) and after (an escape is 6 characters).
            message = storable_text(str(message)[:MAX_PROGRESS_MESSAGE])[:MAX_PROGRESS_MESSAGE]
        self._progress = Progress(min(max(float(percent), 0.0), 100.0), message)

    def take_progress(self) -> Progress | None:
        """The report not yet stored, if any (the worker calls this)."""
        progress, self._progress = self._progress, None
        return progress
