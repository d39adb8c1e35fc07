"""The direct transport: workers claim straight from the store.

Claims are batched (one statement for every free slot), wake-ups come from the store
(LISTEN/NOTIFY on PostgreSQL), and polling every ``wait_seconds`` remains the correctness path.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Sequence

from async_jobs.domain.jobs import AttemptOutcome, ClaimRequest, Job, JobId
from async_jobs.ports import JobStore


class DirectTransport:
    """A ``Transport`` over a ``JobStore``; ``claim`` says whose lease and which jobs."""

    def __init__(self, store: JobStore, claim: ClaimRequest) -> None:
        self._store = store
        self._claim = claim
        self._woken = asyncio.Event()
        self._nudged = asyncio.Event()

    async def start(self) -> None:
        return None

    async def stop(self) -> None:
        return None

    async def receive(self, capacity: int, wait_seconds: float, ahead: int = 0) -> list[Job]:
        # ``ahead`` means nothing here: the worker's own prefetch claims ahead.
        request = dataclasses.replace(self._claim, limit=capacity)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + wait_seconds
        while True:
            self._nudged.clear()
            jobs = await self._store.claim_jobs(request)
            if jobs or wait_seconds <= 0 or self._woken.is_set() or self._nudged.is_set():
                return jobs
            remaining = deadline - loop.time()
            if remaining <= 0:
                return []
            await self._wait(remaining)
            # Woken by the store or a nudge: claim again, and if that finds nothing (the
            # job went to another worker, the slot to another job), wait out the rest of
            # the interval. Once the interval is over, return at once: the caller's next
            # call claims first, so an idle worker makes one claim per poll, not two.
            if self._woken.is_set() or loop.time() >= deadline:
                return []

    async def _wait(self, seconds: float) -> None:
        """Until the store wakes us (a new job), wake() or a nudge, or ``seconds`` pass.
        Only the idle path pays for the waiters."""
        waiting = asyncio.ensure_future(self._store.wait_for_jobs(seconds))
        woken = asyncio.ensure_future(self._woken.wait())
        nudged = asyncio.ensure_future(self._nudged.wait())
        try:
            done, _ = await asyncio.wait(
                {waiting, woken, nudged}, return_when=asyncio.FIRST_COMPLETED
            )
        finally:
            waiting.cancel()
            woken.cancel()
            nudged.cancel()
        if waiting in done:
            waiting.result()  # a store error surfaces here, as it would without wake()

    def wake(self) -> None:
        self._woken.set()

    def nudge(self, *, requeued: bool) -> None:
        # Without caps or quotas, a job that ended frees nothing another job waits for: a
        # claim now would find only what the store's wake-up or the next poll brings.
        if requeued or self._claim.limits.any:
            self._nudged.set()

    async def settle(self, outcomes: Sequence[AttemptOutcome]) -> list[JobId]:
        return await self._store.record_outcomes(outcomes)

    def forget(self, job_id: JobId) -> None:
        return None
