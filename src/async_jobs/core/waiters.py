"""Waiting for jobs to end: each waiter is woken by the store when its job may have ended
(LISTEN/NOTIFY on PostgreSQL), not by polling, and re-reads its job now and then anyway."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable

from async_jobs.domain.jobs import Job, JobId
from async_jobs.ports import JobStore

# A waiter re-reads its job this often even without a wake-up (one may be lost with a
# connection); sooner where the store only hears its own process's changes (SQLite).
RECHECK_SECONDS = 5.0
RECHECK_LOCAL_ONLY_SECONDS = 0.5


class FinishWaiters:
    """The waiters of one app, by job: the store tells ``_on_finished`` of ended jobs."""

    def __init__(self, store: JobStore) -> None:
        self._store = store
        self._finish_waiters: dict[JobId, list[asyncio.Event]] = {}

    def __contains__(self, job_id: object) -> bool:
        """Whether someone waits for ``job_id`` now."""
        return job_id in self._finish_waiters

    def __len__(self) -> int:
        """How many jobs someone waits for now."""
        return len(self._finish_waiters)

    async def wait_for(
        self, job_id: JobId, timeout: float, read: Callable[[], Awaitable[Job]]
    ) -> Job:
        """The job (as ``read`` returns it) once terminal, or as it stands after ``timeout``
        seconds."""
        event = asyncio.Event()
        self._finish_waiters.setdefault(job_id, []).append(event)
        try:
            everywhere = await self._store.watch_finished(self._on_finished)
            recheck = RECHECK_SECONDS if everywhere else RECHECK_LOCAL_ONLY_SECONDS
            loop = asyncio.get_running_loop()
            deadline = loop.time() + timeout
            while True:
                event.clear()  # before reading: a wake-up after the read is kept
                job = await read()
                remaining = deadline - loop.time()
                if job.status.is_terminal or remaining <= 0:
                    return job
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(event.wait(), min(remaining, recheck))
        finally:
            waiters = self._finish_waiters.get(job_id, [])
            waiters.remove(event)
            if not waiters:
                self._finish_waiters.pop(job_id, None)

    def _on_finished(self, job_id: JobId) -> None:
        for event in self._finish_waiters.get(job_id, ()):
            event.set()
