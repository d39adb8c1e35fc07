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
        self._nudged.clear()
        jobs = await self._store.claim_jobs(request)
        if jobs or wait_seconds <= 0 or self._woken.is_set() or self._nudged.is_set():
            return jobs
        # Only the idle path pays for the waiters: a wake-up from the store, wake(), or a
        # nudge (slots freed: a use case at its limit may have room again).
        waiting = asyncio.ensure_future(self._store.wait_for_jobs(wait_seconds))
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
        if self._woken.is_set():
            return []
        return await self._store.claim_jobs(request)

    def wake(self) -> None:
        self._woken.set()

    def nudge(self) -> None:
        self._nudged.set()

    async def settle(self, outcomes: Sequence[AttemptOutcome]) -> list[JobId]:
        return await self._store.record_outcomes(outcomes)

    def forget(self, job_id: JobId) -> None:
        return None
