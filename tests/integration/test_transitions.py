"""Every store against the one state machine (``domain/transitions.py``): each combination
of event and facts is played through the store, and the row it leaves is compared with what
``decide`` and ``applied`` say. A store that differs anywhere fails with every difference
listed (case, field, store's value, domain's value)."""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from async_jobs.domain.jobs import (
    AttemptOutcome,
    ClaimRequest,
    Job,
    JobError,
    JobId,
    JobState,
    OutcomeKind,
)
from async_jobs.domain.scheduling import Limits
from async_jobs.domain.transitions import (
    LOST_ENTRY_ERROR,
    Chore,
    Event,
    Facts,
    applied,
    decide,
)
from async_jobs.ports import JobStore
from async_jobs.stores.memory import MemoryStore
from tests.helpers import age_leases, new_job

UNCAPPED = Limits(default_max_concurrent=1_000_000)
BOOM = JobError("Boom", "x" * 600, "Traceback ...")  # longer than a history entry keeps
RETRY_DELAY = 7.5
TIME_SLACK = timedelta(milliseconds=2)  # SQLite keeps milliseconds, as epoch floats


def claim(job_type: str, *, dispatch: bool = False) -> ClaimRequest:
    return ClaimRequest("w1", 1, 30, types=(job_type,), limits=UNCAPPED, dispatch=dispatch)


def observed(job: Job) -> dict[str, Any]:
    """What the state machine decides about a job, as comparable values."""
    return {
        "status": job.status,
        "attempts": job.attempts,
        "max_attempts": job.max_attempts,
        "reason": job.reason,
        "cancel_requested": job.cancel_requested,
        "history": [
            (h.attempt, h.worker_id, h.outcome, h.error_type, h.error_message) for h in job.history
        ],
        "lease_held": job.lease_token is not None,
        "lease_expires_at": job.lease_expires_at is not None,
        "started_at": job.started_at,
        "finished_at": job.finished_at,
        "run_at": job.run_at,
        "deadline_at": job.deadline_at,
        "worker_id": job.worker_id,
    }


def _same(got: object, want: object) -> bool:
    if isinstance(got, datetime) and isinstance(want, datetime):
        return abs(got - want) <= TIME_SLACK
    return got == want


def differences(
    case: str, before: Job, after: Job, event: Event, facts: Facts, error: JobError | None
) -> list[str]:
    """Where ``after`` (the store's row) differs from the domain's ``before`` + ``event``.
    The time of the change is the row's ``updated_at`` (the store's clock)."""
    change = decide(facts, event)
    if change is None:
        want = observed(before)
    else:
        want = observed(
            applied(before, change, after.updated_at, error=error, delay_seconds=RETRY_DELAY)
        )
    got = observed(after)
    where = f"{case} {event.value}"
    return [
        f"{where}: {field}: store {got[field]!r}, domain {want[field]!r}"
        for field in want
        if not _same(got[field], want[field])
    ]


async def stored(store: JobStore, job_id: JobId) -> Job:
    job = await store.get_job(job_id)
    assert job is not None
    return job


def store_now(store: JobStore) -> datetime:
    return store._clock() if isinstance(store, MemoryStore) else datetime.now(UTC)


OUTCOME_CASES = list(
    itertools.product(
        OutcomeKind,  # the outcome a worker records
        (False, True),  # cancellation asked
        (True, False),  # attempts left after this one
        (False, True),  # the lease ran out
        (False, True),  # the reaper ran before the outcome came
    )
)


async def test_every_outcome_and_reaped_lease_does_what_the_domain_says(store: JobStore) -> None:
    divergences: list[str] = []
    for n, (kind, cancel, attempts_left, lease_ran_out, reaped) in enumerate(OUTCOME_CASES):
        case = (
            f"[{kind.value} cancel={cancel} attempts_left={attempts_left}"
            f" lease_ran_out={lease_ran_out} reaped={reaped}]"
        )
        job_type = f"case{n}"
        new = new_job(job_type, max_attempts=2 if attempts_left else 1, delay=0)
        await store.insert_job(new)
        (held,) = await store.claim_jobs(claim(job_type))
        if cancel:
            await store.cancel_job(held.id)
        if lease_ran_out:
            await age_leases(store, [held.id])
        before = await stored(store, held.id)
        if reaped:
            await store.reap_expired_leases(100)
            after = await stored(store, held.id)
            facts = Facts(
                before.status,
                before.cancel_requested,
                before.attempts < before.max_attempts,
                lease_expired=lease_ran_out,
            )
            divergences += differences(case, before, after, Chore.REAP, facts, LOST_ENTRY_ERROR)
            before = after
        assert held.lease_token is not None
        error = None if kind is OutcomeKind.SUCCEEDED else BOOM
        await store.record_outcomes(
            [
                AttemptOutcome(
                    held.id,
                    held.attempts,
                    held.lease_token,
                    kind,
                    result={"n": n} if kind is OutcomeKind.SUCCEEDED else None,
                    error=error,
                    retry_delay_seconds=RETRY_DELAY,
                )
            ]
        )
        after = await stored(store, held.id)
        facts = Facts(
            before.status,
            before.cancel_requested,
            before.attempts < before.max_attempts,
            lease_expired=lease_ran_out and before.status is JobState.RUNNING,
        )
        divergences += differences(case, before, after, kind, facts, error)
    assert divergences == []


@dataclass(frozen=True)
class Start:
    """A state to start a chore from, and how to reach it."""

    status: JobState
    cancel_requested: bool = False
    ended_by: OutcomeKind | None = None


STARTS = [
    Start(JobState.PENDING),
    Start(JobState.QUEUED),
    Start(JobState.RUNNING),
    Start(JobState.RUNNING, cancel_requested=True),
    Start(JobState.SUCCEEDED, ended_by=OutcomeKind.SUCCEEDED),
    Start(JobState.FAILED, ended_by=OutcomeKind.FAILED),
    Start(JobState.CANCELLED, ended_by=OutcomeKind.CANCELLED),
]
CHORE_CASES = list(
    itertools.product(
        STARTS,
        (Chore.CANCEL, Chore.RETRY, Chore.EXPIRE),
        (False, True),  # its expires_at has passed
    )
)


async def reach(store: JobStore, start: Start, job_type: str) -> Job:
    expires_at = store_now(store) + timedelta(days=1)
    job, _ = await store.insert_job(new_job(job_type, delay=0, expires_at=expires_at))
    if start.status is JobState.PENDING:
        return job
    queued = start.status is JobState.QUEUED
    (job,) = await store.claim_jobs(claim(job_type, dispatch=queued))
    if start.cancel_requested:
        await store.cancel_job(job.id)
    if start.ended_by is not None:
        assert job.lease_token is not None
        ended = AttemptOutcome(job.id, job.attempts, job.lease_token, start.ended_by, error=BOOM)
        await store.record_outcomes([ended])
    reached = await stored(store, job.id)
    assert (reached.status, reached.cancel_requested) == (start.status, start.cancel_requested)
    return reached


async def test_every_cancel_retry_and_expiry_does_what_the_domain_says(store: JobStore) -> None:
    divergences: list[str] = []
    for n, (start, chore, past_expiry) in enumerate(CHORE_CASES):
        case = f"[{start.status.value} cancel={start.cancel_requested} expired={past_expiry}]"
        job = await reach(store, start, f"case{n}")
        if past_expiry:
            await age_leases(store, [job.id], seconds=2 * 86400, column="expires_at")
        before = await stored(store, job.id)
        if chore is Chore.CANCEL:
            await store.cancel_job(job.id)
        elif chore is Chore.RETRY:
            await store.retry_job(job.id)
        else:
            await store.expire_jobs(1000)
        after = await stored(store, job.id)
        facts = Facts(
            before.status,
            before.cancel_requested,
            before.attempts < before.max_attempts,
            past_expiry=past_expiry,
        )
        divergences += differences(case, before, after, chore, facts, None)
    assert divergences == []


def test_the_walk_covers_every_event_and_state() -> None:
    """The two walks above reach every event, and every state a job can be in."""
    events = {kind for kind, *_ in OUTCOME_CASES} | {chore for _, chore, _ in CHORE_CASES}
    events.add(Chore.REAP)  # before an outcome, in the first walk
    assert events == {*OutcomeKind, *Chore}
    assert {start.status for start in STARTS} == set(JobState)
    assert len(OUTCOME_CASES) == len(OutcomeKind) * 2**4
