"""An in-process store for users' unit tests: the same behaviour as the database stores
(the conformance suite runs it through the same cases), nothing durable.

Its clock is injectable, so a test can move time instead of waiting for it.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import uuid
from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta

from async_jobs.domain.errors import StoreError
from async_jobs.domain.jobs import (
    AttemptOutcome,
    ClaimRequest,
    Job,
    JobFilter,
    JobId,
    JobPage,
    JobState,
    LeaseToken,
    NewJob,
    OutcomeKind,
    PageCursor,
)


def _utc_now() -> datetime:
    return datetime.now(UTC)


class MemoryStore:
    """A ``JobStore`` held in a dict; safe within one event loop."""

    def __init__(self, clock: Callable[[], datetime] = _utc_now) -> None:
        self._clock = clock
        self._jobs: dict[JobId, Job] = {}
        self._keys: dict[tuple[str, str], JobId] = {}
        self._wakeup = asyncio.Event()
        self._open = False

    async def open(self) -> None:
        self._open = True

    async def close(self) -> None:
        self._open = False

    async def migrate(self) -> list[str]:
        return []

    async def ping(self) -> None:
        self._check_open()

    def _check_open(self) -> None:
        if not self._open:
            raise StoreError("the store is not open; call open() first")

    async def insert_job(self, job: NewJob) -> tuple[Job, bool]:
        return (await self.insert_jobs([job]))[0]

    async def insert_jobs(self, jobs: Sequence[NewJob]) -> list[tuple[Job, bool]]:
        self._check_open()
        ids = [new.id for new in jobs]
        if len(set(ids)) != len(ids) or any(i in self._jobs for i in ids):
            raise StoreError("a job with this id already exists; nothing was stored")
        results: list[tuple[Job, bool]] = []
        for new in jobs:
            existing = self._existing(new)
            if existing is not None:
                results.append((existing, False))
                continue
            job = self._build(new)
            self._jobs[job.id] = job
            if new.idempotency_key is not None:
                self._keys[(new.tenant_id, new.idempotency_key)] = job.id
            results.append((job, True))
        if jobs:
            self._wakeup.set()
        return results

    def _existing(self, new: NewJob) -> Job | None:
        if new.idempotency_key is None:
            return None
        found = self._keys.get((new.tenant_id, new.idempotency_key))
        return self._jobs.get(found) if found is not None else None

    def _build(self, new: NewJob) -> Job:
        now = self._clock()
        run_at = new.run_at or now + timedelta(seconds=new.delay_seconds)
        return new.stored(run_at, run_at + timedelta(seconds=new.delay_tolerance_seconds), now)

    async def get_job(self, job_id: JobId, tenant_id: str | None = None) -> Job | None:
        self._check_open()
        job = self._jobs.get(job_id)
        if job is None or (tenant_id is not None and job.tenant_id != tenant_id):
            return None
        return job

    async def list_jobs(
        self, where: JobFilter, limit: int, after: PageCursor | None = None
    ) -> JobPage:
        self._check_open()
        rows = sorted(
            (j for j in self._jobs.values() if _matches(j, where, after)),
            key=lambda j: (j.created_at, j.id),
            reverse=True,
        )
        items = rows[:limit]
        more = len(rows) > limit
        cursor = PageCursor(items[-1].created_at, items[-1].id) if more and items else None
        return JobPage(items=items, next_cursor=cursor)

    async def claim_jobs(self, request: ClaimRequest) -> list[Job]:
        self._check_open()
        now = self._clock()
        due = sorted(
            (j for j in self._jobs.values() if _claimable(j, request, now)),
            key=lambda j: (j.priority.rank, j.deadline_at, j.run_at),
        )[: request.limit]
        claimed = []
        for job in due:
            running = dataclasses.replace(
                job,
                status=JobState.RUNNING,
                attempts=job.attempts + 1,
                lease_token=LeaseToken(uuid.uuid4()),
                lease_expires_at=now + timedelta(seconds=request.lease_seconds),
                worker_id=request.worker_id,
                started_at=now,
                finished_at=None,
                progress=None,
                updated_at=now,
            )
            self._jobs[job.id] = running
            claimed.append(running)
        return claimed

    async def record_outcomes(self, outcomes: Sequence[AttemptOutcome]) -> list[JobId]:
        self._check_open()
        now = self._clock()
        written: list[JobId] = []
        for outcome in outcomes:
            job = self._jobs.get(outcome.job_id)
            if job is None or not _holds(job, outcome.attempt, outcome.lease_token):
                continue
            self._jobs[job.id] = _apply(job, outcome, now)
            written.append(job.id)
            if outcome.kind is OutcomeKind.RELEASED:
                self._wakeup.set()
        return written

    async def extend_leases(
        self, claims: Sequence[tuple[JobId, int, LeaseToken]], lease_seconds: float
    ) -> list[JobId]:
        self._check_open()
        now = self._clock()
        held: list[JobId] = []
        for job_id, attempt, token in claims:
            job = self._jobs.get(job_id)
            if job is None or not _holds(job, attempt, token):
                continue
            self._jobs[job_id] = dataclasses.replace(
                job, lease_expires_at=now + timedelta(seconds=lease_seconds), updated_at=now
            )
            held.append(job_id)
        return held

    async def wait_for_jobs(self, timeout: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._wakeup.wait(), timeout)
        self._wakeup.clear()


def _holds(job: Job, attempt: int, token: LeaseToken) -> bool:
    return job.status is JobState.RUNNING and job.attempts == attempt and job.lease_token == token


def _apply(job: Job, outcome: AttemptOutcome, now: datetime) -> Job:
    common = {
        "result": outcome.result,
        "error": outcome.error or job.error,
        "lease_token": None,
        "lease_expires_at": None,
        "updated_at": now,
    }
    kind = outcome.kind
    if kind is OutcomeKind.RETRY:
        run_at = now + timedelta(seconds=outcome.retry_delay_seconds)
        deadline = run_at + timedelta(seconds=job.delay_tolerance_seconds)
        return dataclasses.replace(
            job,
            status=JobState.PENDING,
            run_at=run_at,
            deadline_at=deadline,
            finished_at=None,
            **common,
        )
    if kind is OutcomeKind.RELEASED:
        return dataclasses.replace(
            job,
            status=JobState.PENDING,
            attempts=job.attempts - 1,
            started_at=None,
            finished_at=None,
            **common,
        )
    return dataclasses.replace(job, status=JobState(kind.value), finished_at=now, **common)


def _claimable(job: Job, request: ClaimRequest, now: datetime) -> bool:
    return (
        job.status is JobState.PENDING
        and job.run_at <= now
        and (not request.use_cases or job.use_case in request.use_cases)
        and (not request.types or job.type in request.types)
    )


def _matches(job: Job, where: JobFilter, after: PageCursor | None) -> bool:
    checks = (
        where.tenant_id is None or job.tenant_id == where.tenant_id,
        where.status is None or job.status is where.status,
        where.use_case is None or job.use_case == where.use_case,
        where.type is None or job.type == where.type,
        where.created_after is None or job.created_at > where.created_after,
        where.created_before is None or job.created_at < where.created_before,
        after is None or (job.created_at, job.id) < (after.created_at, after.id),
    )
    return all(checks)
