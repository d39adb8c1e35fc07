"""The narrow interfaces the core depends on; stores and transports implement them.

Each method is one operation whose name says what happens to which rows. Every write to a
claimed job is fenced by its attempt number and lease token: a method that finds the fence
broken changes nothing and reports it by what it returns.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from async_jobs.domain.jobs import (
    AttemptOutcome,
    ClaimRequest,
    Job,
    JobFilter,
    JobId,
    JobPage,
    LeaseToken,
    NewJob,
    PageCursor,
)


class JobStore(Protocol):
    """Durable home of jobs; the single source of truth."""

    async def open(self) -> None:
        """Connect; raises ``StoreUnavailableError`` if the store does not answer."""

    async def close(self) -> None: ...

    async def migrate(self) -> list[str]:
        """Create or upgrade the schema; returns the names of the migrations applied now."""

    async def ping(self) -> None:
        """Raise ``StoreUnavailableError`` unless the store answers now."""

    async def insert_job(self, job: NewJob) -> tuple[Job, bool]:
        """Store one job. Returns the job and True, or, when the tenant already has a job
        with the same idempotency key, that job and False."""

    async def insert_jobs(self, jobs: Sequence[NewJob]) -> list[tuple[Job, bool]]:
        """Store many jobs in one transaction: all or none."""

    async def get_job(self, job_id: JobId, tenant_id: str | None = None) -> Job | None:
        """One job; with ``tenant_id``, only if it belongs to that tenant."""

    async def list_jobs(
        self, where: JobFilter, limit: int, after: PageCursor | None = None
    ) -> JobPage:
        """Newest first (``created_at``, then ``id``), starting after ``after``."""

    async def claim_jobs(self, request: ClaimRequest) -> list[Job]:
        """Move up to ``request.limit`` due pending jobs to running, in priority then
        deadline order, each with attempts + 1, a fresh lease token and a lease that ends
        ``request.lease_seconds`` from now by the store's clock."""

    async def record_outcomes(self, outcomes: Sequence[AttemptOutcome]) -> list[JobId]:
        """Write the end of many attempts at once. Only jobs still running under the
        outcome's attempt and lease token change; returns the ids that did."""

    async def extend_leases(
        self, claims: Sequence[tuple[JobId, int, LeaseToken]], lease_seconds: float
    ) -> list[JobId]:
        """Renew the leases of running jobs (id, attempt, lease token); returns the ids
        still held. A job missing from the answer was lost and must not be written."""

    async def wait_for_jobs(self, timeout: float) -> None:
        """Return when new jobs may be due, or after ``timeout`` seconds. A latency aid
        only: callers still poll."""


class Transport(Protocol):
    """How claimed jobs reach a worker. The store stays the truth."""

    async def start(self) -> None: ...

    async def stop(self) -> None: ...

    async def receive(self, capacity: int, wait_seconds: float) -> list[Job]:
        """Up to ``capacity`` jobs now running under this worker's lease; waits up to
        ``wait_seconds`` for the first one."""

    async def settle(self, outcomes: Sequence[AttemptOutcome]) -> list[JobId]:
        """Record outcomes in the store, then tell the broker (if any) they are done."""
