"""What a handler gets besides its payload: the job, its attempt, and a way to tell whether
it should stop."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from typing import Any

from async_jobs.domain.jobs import Job


@dataclasses.dataclass(slots=True)
class JobContext:
    """Passed as the first argument of every handler call."""

    job: Job
    worker_id: str
    logger: logging.Logger
    _stop: asyncio.Event = dataclasses.field(default_factory=asyncio.Event)

    @property
    def attempt(self) -> int:
        """1 on the first run, 2 on the first retry, and so on."""
        return self.job.attempts

    @property
    def payload(self) -> dict[str, Any]:
        return self.job.payload

    @property
    def stop_requested(self) -> bool:
        """True once the worker wants this attempt to end (shutdown, lost lease, timeout).

        Long sync handlers should check it between steps; async handlers are also
        cancelled at their next ``await``.
        """
        return self._stop.is_set()

    def request_stop(self) -> None:
        self._stop.set()
