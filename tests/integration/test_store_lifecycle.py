"""One suite, every store: the job lifecycle beyond claim and outcome. Attempt history,
per-job backoff, cancellation, manual retry, progress, the reaper of expired leases and
the refusal of a transactional enqueue where the store cannot do one."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

import pytest

from async_jobs.domain.errors import ConfigurationError
from async_jobs.domain.jobs import (
    MAX_HISTORY,
    AttemptOutcome,
    ClaimRequest,
    Job,
    JobError,
    JobFilter,
    JobId,
    JobState,
    LeaseState,
    LeaseToken,
    OutcomeKind,
    Progress,
    ProgressUpdate,
    Reason,
    time_of_id,
)
from async_jobs.domain.retry import Backoff
from async_jobs.ports import JobStore
from async_jobs.stores.postgres import PostgresStore
from tests.helpers import age_leases, new_job, wait_until

MS = timedelta(milliseconds=1)


def claim(limit: int = 10, lease_seconds: float = 30, **kw: object) -> ClaimRequest:
    return ClaimRequest(worker_id="w1", limit=limit, lease_seconds=lease_seconds, **kw)  # type: ignore[arg-type]


def outcome(job: Job, kind: OutcomeKind, **kw: object) -> AttemptOutcome:
    assert job.lease_token is not None
    return AttemptOutcome(job.id, job.attempts, job.lease_token, kind, **kw)  # type: ignore[arg-type]


def held(job: Job) -> tuple[JobId, int, LeaseToken]:
    assert job.lease_token is not None
    return (job.id, job.attempts, job.lease_token)


async def stored(store: JobStore, job_id: JobId) -> Job:
    job = await store.get_job(job_id)
    assert job is not None
    return job


async def claim_one(store: JobStore, job_type: str, lease_seconds: float = 30) -> Job:
    (job,) = await store.claim_jobs(claim(types=(job_type,), lease_seconds=lease_seconds))
    return job


# -- history --------------------------------------------------------------------------------


async def test_history_records_every_unsuccessful_attempt_and_no_plain_release(
    store: JobStore,
) -> None:
    await store.insert_job(new_job(max_attempts=5))
    (first,) = await store.claim_jobs(claim())
    long_message = "x" * 600
    boom = JobError("Boom", long_message, "Traceback ...")
    await store.record_outcomes([outcome(first, OutcomeKind.RETRY, error=boom)])
    (second,) = await store.claim_jobs(claim())
    await store.record_outcomes([outcome(second, OutcomeKind.RELEASED)])
    released = await stored(store, second.id)
    assert released.attempts == 1
    assert len(released.history) == 1
    assert released.reason is None
    (again,) = await store.claim_jobs(claim())
    assert again.attempts == 2
    await store.record_outcomes([outcome(again, OutcomeKind.SUCCEEDED, result={"ok": True})])

    done = await stored(store, first.id)
    assert done.status is JobState.SUCCEEDED
    assert done.reason is None
    # The successful attempt is the row itself (attempts, started_at, finished_at, worker_id).
    assert [(h.attempt, h.outcome) for h in done.history] == [(1, "retry")]
    (retried,) = done.history
    assert retried.worker_id == "w1"
    assert retried.error_type == "Boom"
    assert retried.error_message == long_message[:500]
    assert first.started_at is not None
    assert retried.started_at == pytest.approx(first.started_at, abs=MS)
    assert retried.finished_at >= first.started_at - MS
    assert done.started_at == pytest.approx(again.started_at, abs=MS)
    assert done.history[0].finished_at.tzinfo is not None


async def test_history_records_a_failed_attempt(store: JobStore) -> None:
    await store.insert_job(new_job())
    (job,) = await store.claim_jobs(claim())
    await store.record_outcomes([outcome(job, OutcomeKind.FAILED, error=JobError("E", "bad"))])
    failed = await stored(store, job.id)
    assert failed.status is JobState.FAILED
    assert [(h.attempt, h.outcome, h.error_type, h.error_message) for h in failed.history] == [
        (1, "failed", "E", "bad")
    ]


async def test_history_keeps_the_latest_attempts(store: JobStore) -> None:
    await store.insert_job(new_job(max_attempts=MAX_HISTORY + 5))
    for _ in range(MAX_HISTORY + 2):
        (job,) = await store.claim_jobs(claim())
        await store.record_outcomes([outcome(job, OutcomeKind.RETRY)])
    kept = (await stored(store, job.id)).history
    assert [h.attempt for h in kept] == list(range(3, MAX_HISTORY + 3))


# -- backoff --------------------------------------------------------------------------------


async def test_a_jobs_own_backoff_round_trips(store: JobStore) -> None:
    linear = Backoff.linear(10, cap_seconds=60, jitter=0.25)
    constant = Backoff.constant(5)
    job, _ = await store.insert_job(new_job("one", backoff=linear))
    batch = await store.insert_jobs(
        [new_job("two", backoff=constant), new_job("three"), new_job("four", backoff=linear)]
    )
    assert job.backoff == linear
    assert [j.backoff for j, _ in batch] == [constant, None, linear]
    assert (await stored(store, job.id)).backoff == linear
    listed = await store.list_jobs(JobFilter(), 10)
    assert {j.type: j.backoff for j in listed.items} == {
        "one": linear,
        "two": constant,
        "three": None,
        "four": linear,
    }
    claimed = await store.claim_jobs(claim(types=("two",)))
    assert [j.backoff for j in claimed] == [constant]


# -- cancellation ---------------------------------------------------------------------------


async def test_cancel_of_a_pending_job_cancels_it_at_once(store: JobStore) -> None:
    job, _ = await store.insert_job(new_job())
    answer = await store.cancel_job(job.id)
    assert answer is not None
    cancelled, changed = answer
    assert changed
    assert cancelled.status is JobState.CANCELLED
    assert cancelled.cancel_requested
    assert cancelled.reason == Reason.CANCELLED
    assert cancelled.finished_at is not None
    assert await stored(store, job.id) == cancelled
    assert await store.claim_jobs(claim()) == []
    assert await store.cancel_job(job.id) == (cancelled, False)  # already ended: unchanged


@pytest.mark.parametrize("ending", [OutcomeKind.RETRY, OutcomeKind.RELEASED])
async def test_cancel_of_a_running_job_flags_it_until_its_attempt_ends(
    store: JobStore, ending: OutcomeKind
) -> None:
    told: list[JobId] = []
    store.watch_cancellations(told.append)
    await store.wait_for_jobs(0)  # PostgreSQL: starts the LISTEN connection that tells
    await store.insert_job(new_job(max_attempts=3))
    (job,) = await store.claim_jobs(claim())

    answer = await store.cancel_job(job.id)
    assert answer is not None
    flagged, changed = answer
    assert changed
    assert flagged.status is JobState.RUNNING
    assert flagged.cancel_requested
    assert flagged.reason == Reason.CANCELLED
    assert flagged.lease_token == job.lease_token
    assert flagged.finished_at is None
    await wait_until(lambda: told)
    assert told == [job.id]
    again = await store.cancel_job(job.id)
    assert again is not None
    assert again[0].status is JobState.RUNNING and again[0].cancel_requested
    assert again[1] is False  # asked already: nothing to do
    assert told == [job.id]

    assert await store.extend_leases([held(job)], 30) == [LeaseState(job.id, True)]
    await store.record_outcomes([outcome(job, ending, error=JobError("Stop", "stopped"))])
    ended = await stored(store, job.id)
    assert ended.status is JobState.CANCELLED
    assert ended.attempts == 1
    assert ended.reason == Reason.CANCELLED
    assert ended.finished_at is not None
    assert ended.lease_token is None
    assert [(h.attempt, h.outcome) for h in ended.history] == [(1, "cancelled")]
    assert await store.claim_jobs(claim()) == []


async def test_a_cancelled_outcome_records_the_reason(store: JobStore) -> None:
    await store.insert_job(new_job())
    (job,) = await store.claim_jobs(claim())
    await store.record_outcomes([outcome(job, OutcomeKind.CANCELLED)])
    ended = await stored(store, job.id)
    assert (ended.status, ended.reason) == (JobState.CANCELLED, Reason.CANCELLED)
    assert [h.outcome for h in ended.history] == ["cancelled"]


@pytest.mark.parametrize("kind", [OutcomeKind.SUCCEEDED, OutcomeKind.FAILED])
async def test_cancel_leaves_a_terminal_job_as_it_stands(
    store: JobStore, kind: OutcomeKind
) -> None:
    await store.insert_job(new_job())
    (job,) = await store.claim_jobs(claim())
    await store.record_outcomes([outcome(job, kind)])
    before = await stored(store, job.id)
    assert await store.cancel_job(job.id) == (before, False)
    assert not before.cancel_requested and before.reason is None
    assert await stored(store, job.id) == before


async def test_cancel_and_retry_find_no_unknown_or_foreign_job(store: JobStore) -> None:
    job, _ = await store.insert_job(new_job(tenant_id="t1"))
    unknown = JobId(uuid.uuid4())
    assert await store.cancel_job(unknown) is None
    assert await store.retry_job(unknown) is None
    assert await store.cancel_job(job.id, "t2") is None
    assert await store.retry_job(job.id, "t2") is None
    assert (await stored(store, job.id)).status is JobState.PENDING
    mine = await store.cancel_job(job.id, "t1")
    assert mine is not None and mine[0].status is JobState.CANCELLED


# -- manual retry ---------------------------------------------------------------------------


async def test_retry_of_a_failed_job_gives_it_one_more_attempt(store: JobStore) -> None:
    await store.insert_job(new_job(max_attempts=1, delay_tolerance_seconds=9))
    (job,) = await store.claim_jobs(claim())
    await store.record_progress([ProgressUpdate(job.id, 1, held(job)[2], 50.0, "half")])
    error = JobError("Boom", "it broke")
    await store.record_outcomes([outcome(job, OutcomeKind.FAILED, error=error, result={"n": 1})])

    answer = await store.retry_job(job.id)
    assert answer is not None
    retried, changed = answer
    assert changed
    assert retried.status is JobState.PENDING
    assert (retried.attempts, retried.max_attempts) == (1, 2)
    assert retried.reason == Reason.MANUAL_RETRY
    assert retried.error == error
    assert [h.outcome for h in retried.history] == ["failed"]
    assert retried.result is None and retried.progress is None
    assert retried.worker_id is None
    assert retried.started_at is None and retried.finished_at is None
    assert not retried.cancel_requested
    assert retried.run_at == retried.updated_at
    assert retried.deadline_at - retried.run_at == timedelta(seconds=9)
    assert await stored(store, job.id) == retried

    (again,) = await store.claim_jobs(claim())
    assert (again.id, again.attempts) == (job.id, 2)


async def test_retry_keeps_max_attempts_when_some_are_left(store: JobStore) -> None:
    await store.insert_job(new_job(max_attempts=4))
    (job,) = await store.claim_jobs(claim())
    await store.record_outcomes([outcome(job, OutcomeKind.FAILED)])
    answer = await store.retry_job(job.id)
    assert answer is not None
    assert (answer[0].attempts, answer[0].max_attempts, answer[1]) == (1, 4, True)


async def test_retry_of_a_cancelled_job_clears_the_cancellation(store: JobStore) -> None:
    job, _ = await store.insert_job(new_job())
    await store.cancel_job(job.id)
    answer = await store.retry_job(job.id)
    assert answer is not None
    retried, changed = answer
    assert changed
    assert retried.status is JobState.PENDING
    assert not retried.cancel_requested
    assert retried.reason == Reason.MANUAL_RETRY
    assert retried.finished_at is None
    (claimed,) = await store.claim_jobs(claim())
    assert (claimed.id, claimed.attempts, claimed.max_attempts) == (job.id, 1, job.max_attempts)


async def test_retry_leaves_pending_running_and_succeeded_jobs_alone(store: JobStore) -> None:
    await store.insert_jobs([new_job("run"), new_job("win")])
    pending, _ = await store.insert_job(new_job("wait"))
    running = await claim_one(store, "run")
    won = await claim_one(store, "win")
    await store.record_outcomes([outcome(won, OutcomeKind.SUCCEEDED)])
    for job_id, state in [
        (pending.id, JobState.PENDING),
        (running.id, JobState.RUNNING),
        (won.id, JobState.SUCCEEDED),
    ]:
        before = await stored(store, job_id)
        answer = await store.retry_job(job_id)
        assert answer == (before, False)
        assert before.status is state
        assert await stored(store, job_id) == before


# -- progress -------------------------------------------------------------------------------


async def test_progress_is_fenced_by_attempt_and_lease_token(store: JobStore) -> None:
    await store.insert_job(new_job())
    (job,) = await store.claim_jobs(claim())
    _, attempt, token = held(job)
    stale = [
        ProgressUpdate(job.id, attempt, LeaseToken(uuid.uuid4()), 10.0, "wrong token"),
        ProgressUpdate(job.id, attempt + 1, token, 20.0, "wrong attempt"),
        ProgressUpdate(JobId(uuid.uuid4()), attempt, token, 30.0, "no such job"),
    ]
    assert await store.record_progress(stale) == []
    assert (await stored(store, job.id)).progress is None
    assert await store.record_progress([ProgressUpdate(job.id, attempt, token, 12.5, None)]) == [
        job.id
    ]
    assert await store.record_progress([ProgressUpdate(job.id, attempt, token, 50, "half")]) == [
        job.id
    ]
    assert (await stored(store, job.id)).progress == Progress(50.0, "half")
    await store.record_outcomes([outcome(job, OutcomeKind.SUCCEEDED)])
    late = [ProgressUpdate(job.id, attempt, token, 75.0, "late")]
    assert await store.record_progress(late) == []
    assert (await stored(store, job.id)).progress == Progress(50.0, "half")


# -- the reaper -----------------------------------------------------------------------------


async def test_reaper_sends_a_lost_job_back_and_leaves_live_leases_alone(
    store: JobStore,
) -> None:
    await store.insert_jobs([new_job("lost", delay_tolerance_seconds=11), new_job("live")])
    lost = await claim_one(store, "lost")
    live = await claim_one(store, "live", lease_seconds=36000)
    await age_leases(store, [lost.id])

    (reaped,) = await store.reap_expired_leases(10)
    assert reaped.id == lost.id
    assert reaped.status is JobState.PENDING
    assert reaped.attempts == 1
    assert reaped.reason == Reason.WORKER_LOST
    assert reaped.error is not None and reaped.error.type == "WorkerLost"
    assert reaped.lease_token is None and reaped.lease_expires_at is None
    assert reaped.finished_at is None
    assert reaped.run_at == reaped.updated_at
    assert reaped.deadline_at - reaped.run_at == timedelta(seconds=11)
    (entry,) = reaped.history
    assert (entry.attempt, entry.worker_id, entry.outcome) == (1, "w1", "worker_lost")
    assert entry.error_type == "WorkerLost"
    assert lost.started_at is not None
    assert entry.started_at == pytest.approx(lost.started_at, abs=MS)
    assert await stored(store, lost.id) == reaped

    assert await stored(store, live.id) == live
    assert await store.reap_expired_leases(10) == []
    # The lost worker's lease is gone: it can neither renew nor write.
    assert await store.extend_leases([held(lost)], 30) == []
    assert await store.record_outcomes([outcome(lost, OutcomeKind.SUCCEEDED)]) == []
    again = await claim_one(store, "lost")
    assert again.attempts == 2


async def test_reaper_fails_a_job_whose_attempts_are_spent(store: JobStore) -> None:
    await store.insert_job(new_job(max_attempts=1))
    (job,) = await store.claim_jobs(claim())
    await age_leases(store, [job.id])
    (reaped,) = await store.reap_expired_leases(10)
    assert reaped.status is JobState.FAILED
    assert reaped.reason == Reason.WORKER_LOST
    assert reaped.finished_at is not None
    assert reaped.error is not None and reaped.error.type == "WorkerLost"
    assert [h.outcome for h in reaped.history] == ["worker_lost"]
    assert await store.claim_jobs(claim()) == []


async def test_reaper_ends_a_lost_job_whose_cancellation_was_asked(store: JobStore) -> None:
    await store.insert_job(new_job())
    (job,) = await store.claim_jobs(claim())
    await store.cancel_job(job.id)
    await age_leases(store, [job.id])
    (reaped,) = await store.reap_expired_leases(10)
    assert reaped.status is JobState.CANCELLED
    assert reaped.reason == Reason.CANCELLED
    assert reaped.finished_at is not None
    assert [h.outcome for h in reaped.history] == ["worker_lost"]


async def test_reaper_leaves_a_job_completed_before_it_alone(store: JobStore) -> None:
    await store.insert_jobs([new_job("done"), new_job("lost")])
    done = await claim_one(store, "done")
    lost = await claim_one(store, "lost")
    await age_leases(store, [done.id, lost.id])
    await store.record_outcomes([outcome(done, OutcomeKind.SUCCEEDED, result=1)])
    finished = await stored(store, done.id)
    reaped = await store.reap_expired_leases(10)
    assert [j.id for j in reaped] == [lost.id]
    assert await stored(store, done.id) == finished
    assert finished.status is JobState.SUCCEEDED
    assert finished.history == []


async def test_reaper_takes_at_most_limit_oldest_first_and_pages_until_empty(
    store: JobStore,
) -> None:
    await store.insert_jobs([new_job(f"j{i}") for i in range(5)])
    # Leases of different lengths end in this order: j0 first.
    claimed = [await claim_one(store, f"j{i}", lease_seconds=30 + i) for i in range(5)]
    await age_leases(store, [j.id for j in claimed])
    pages = []
    while page := await store.reap_expired_leases(2):
        assert len(page) <= 2
        pages.append({j.type for j in page})
    assert pages == [{"j0", "j1"}, {"j2", "j3"}, {"j4"}]
    assert all(j.status is JobState.PENDING for j in await _all(store))
    assert await store.reap_expired_leases(0) == []


async def _all(store: JobStore) -> list[Job]:
    return (await store.list_jobs(JobFilter(), 100)).items


# -- transactional enqueue ------------------------------------------------------------------


async def test_transactional_enqueue_needs_a_connection_the_store_can_use(
    store: JobStore,
) -> None:
    job = new_job()
    with pytest.raises(ConfigurationError) as raised:
        await store.insert_jobs_in(object(), [job])
    if not isinstance(store, PostgresStore):
        assert "needs the PostgreSQL store" in str(raised.value)
    assert await store.get_job(job.id) is None


async def test_a_job_enqueued_in_a_long_transaction_is_created_when_it_was_enqueued(
    store: JobStore,
) -> None:
    """created_at is the id's time, not the caller's transaction's start (``now()``)."""
    if not isinstance(store, PostgresStore):
        pytest.skip("transactional enqueue is the PostgreSQL store's")
    import asyncpg

    conn = await asyncpg.connect(store.dsn)
    try:
        async with conn.transaction():
            began = await conn.fetchval("SELECT now()")
            await wait_until(lambda: datetime.now(UTC) > began + timedelta(milliseconds=50))
            [(job, created)] = await store.insert_jobs_in(conn, [new_job()])
        assert created and job.created_at >= began + timedelta(milliseconds=50)
        assert job.created_at == time_of_id(job.id)
        assert await store.get_job(job.id) == job
    finally:
        await conn.close()
