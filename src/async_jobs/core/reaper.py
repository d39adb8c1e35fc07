"""The reaper: hands back the jobs of workers that died or hung.

A worker renews the leases of the jobs it holds every third of a lease. A job still
``running`` after its lease expired (by the store's clock) has lost its worker: the reaper
counts that attempt as ``worker_lost`` and makes the job due again, or fails it once its
attempts are spent, so that a job that kills its worker cannot loop forever. The store does
the check and the write in one guarded statement; a job that completed meanwhile is never
touched, and several reapers may run at once.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Callable

from async_jobs.core.metrics import Metrics
from async_jobs.domain.errors import StoreError
from async_jobs.domain.jobs import Job
from async_jobs.ports import JobStore

log = logging.getLogger("async_jobs.reaper")

DEFAULT_BATCH = 500


class Reaper:
    def __init__(
        self, store: JobStore, batch_size: int = DEFAULT_BATCH, metrics: Metrics | None = None
    ) -> None:
        if batch_size < 1:
            raise ValueError("batch size must be at least 1")
        self._store = store
        self._metrics = metrics or Metrics.off()
        self._batch_size = batch_size
        self.reaped = 0

    async def run_once(self) -> list[Job]:
        """Reap every expired lease now, a bounded batch per statement; returns the jobs."""
        reaped: list[Job] = []
        while True:
            batch = await self._store.reap_expired_leases(self._batch_size)
            reaped.extend(batch)
            if len(batch) < self._batch_size:
                break
        for job in reaped:
            log.warning(
                "job %s (%s) lost its worker %s in attempt %d: now %s",
                job.id,
                job.type,
                job.history[-1].worker_id if job.history else "?",
                job.attempts,
                job.status.value,
            )
        self.reaped += len(reaped)
        self._metrics.leases_reaped(reaped)
        return reaped

    async def run(self, interval_seconds: float, when: Callable[[], bool] | None = None) -> None:
        """Reap about every ``interval_seconds`` (jittered, so that many reapers spread out)
        until cancelled, skipping rounds while ``when()`` is false; store errors are logged
        and the next round tries again."""
        while True:
            await asyncio.sleep(interval_seconds * random.uniform(0.5, 1.0))
            if when is not None and not when():
                continue
            try:
                await self.run_once()
            except StoreError as exc:
                self._metrics.store_error("reap_expired_leases")
                log.warning("reaper round failed: %s", exc)
