"""The direct transport: workers claim straight from the store.

Claims are batched (one statement for every free slot), wake-ups come from the store
(LISTEN/NOTIFY on PostgreSQL), and polling every ``wait_seconds`` remains the correctness path.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

from async_jobs.domain.jobs import AttemptOutcome, ClaimRequest, Job, JobId
from async_jobs.ports import JobStore


class DirectTransport:
    """A ``Transport`` over a ``JobStore``; ``claim`` says whose lease and which jobs."""

    def __init__(self, store: JobStore, claim: ClaimRequest) -> None:
        self._store = store
        self._claim = claim

    async def start(self) -> None:
        return None

    async def stop(self) -> None:
        return None

    async def receive(self, capacity: int, wait_seconds: float) -> list[Job]:
        request = dataclasses.replace(self._claim, limit=capacity)
        jobs = await self._store.claim_jobs(request)
        if jobs or wait_seconds <= 0:
            return jobs
        await self._store.wait_for_jobs(wait_seconds)
        return await self._store.claim_jobs(request)

    async def settle(self, outcomes: Sequence[AttemptOutcome]) -> list[JobId]:
        return await self._store.record_outcomes(outcomes)
