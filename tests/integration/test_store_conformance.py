"""One suite, every store: the behaviour the worker and the API rely on."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Awaitable, Callable, Iterator
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest

from async_jobs import EnqueueRequest, JobApp
from async_jobs.domain.errors import (
    IdempotencyConflictError,
    InvalidJobError,
    InvalidTransitionError,
    StoreError,
)
from async_jobs.domain.jobs import (
    AttemptOutcome,
    ClaimRequest,
    Job,
    JobError,
    JobFilter,
    JobState,
    LeaseState,
    LeaseToken,
    NewJob,
    OutcomeKind,
    Priority,
    ProgressUpdate,
    ScanRequest,
    time_of_id,
)
from async_jobs.domain.retry import Backoff
from async_jobs.domain.scheduling import Limits
from async_jobs.ports import JobStore
from async_jobs.stores.postgres import PostgresStore
from async_jobs.stores.postgres.store import STATEMENT_JOBS
from tests.helpers import age_leases, new_job, watch_wakeup

# This suite is not about limits (see test_store_scheduling.py): no use case is capped below
# what its tests claim.
UNCAPPED = Limits(default_max_concurrent=1_000_000)


def claim(limit: int = 10, **kw: object) -> ClaimRequest:
    kw.setdefault("limits", UNCAPPED)
    return ClaimRequest(worker_id="w1", limit=limit, lease_seconds=30, **kw)  # type: ignore[arg-type]


def outcome(job: Job, kind: OutcomeKind, **kw: object) -> AttemptOutcome:
    assert job.lease_token is not None
    return AttemptOutcome(job.id, job.attempts, LeaseToken(job.lease_token), kind, **kw)  # type: ignore[arg-type]


async def test_insert_then_get_round_trips_every_field(store: JobStore) -> None:
    new = new_job(
        "send_email",
        {"to": "a@b.c", "n": [1, 2.5, None, True], "ü": "ñ"},
        tenant_id="t1",
        use_case="notifications",
        priority="high",
        max_attempts=5,
        delay=0,
        delay_tolerance_seconds=60,
        timeout_seconds=12.5,
        idempotency_key="k1",
        webhook_url="https://example.test/hook",
    )
    job, created = await store.insert_job(new)
    assert created
    fetched = await store.get_job(new.id)
    assert fetched is not None
    for got in (job, fetched):
        assert got.id == new.id
        assert (got.tenant_id, got.use_case, got.type) == ("t1", "notifications", "send_email")
        assert got.payload == new.payload
        assert got.priority is Priority.HIGH
        assert got.status is JobState.PENDING
        assert (got.attempts, got.max_attempts) == (0, 5)
        assert got.timeout_seconds == 12.5
        assert got.idempotency_key == "k1"
        assert got.webhook_url == "https://example.test/hook"
        assert got.deadline_at - got.run_at == timedelta(seconds=60)
        assert got.run_at.tzinfo is not None
        assert got.result is None and got.error is None and got.lease_token is None
    assert fetched.created_at == job.created_at


async def test_get_is_scoped_to_the_tenant(store: JobStore) -> None:
    job, _ = await store.insert_job(new_job(tenant_id="t1"))
    assert await store.get_job(job.id, "t1") is not None
    assert await store.get_job(job.id, "t2") is None
    assert await store.get_job(uuid.uuid4()) is None  # type: ignore[arg-type]


async def test_idempotency_key_returns_the_existing_job_per_tenant(store: JobStore) -> None:
    first, created = await store.insert_job(new_job(tenant_id="t1", idempotency_key="same"))
    again, created_again = await store.insert_job(new_job(tenant_id="t1", idempotency_key="same"))
    other, created_other = await store.insert_job(new_job(tenant_id="t2", idempotency_key="same"))
    assert created and not created_again and created_other
    assert again.id == first.id
    assert other.id != first.id
    page = await store.list_jobs(JobFilter(tenant_id="t1"), 10)
    assert [j.id for j in page.items] == [first.id]


async def test_concurrent_single_inserts_each_get_their_own_job_and_error(
    store: JobStore,
) -> None:
    """Many callers at once (the PostgreSQL store writes them in groups): each gets its own
    job back, a repeated key its holder, and a job that cannot be stored (its id is taken)
    its own error, which no other caller sees."""
    taken = new_job()
    await store.insert_job(taken)
    jobs = [new_job(payload={"n": n}) for n in range(150)]
    keyed = [new_job(payload={"n": -1}, idempotency_key="k") for _ in range(5)]
    clash = new_job(job_id=taken.id, payload={"n": -2})
    everyone = [*jobs[:75], *keyed, clash, *jobs[75:]]
    results = await asyncio.gather(
        *(store.insert_job(job) for job in everyone), return_exceptions=True
    )
    failed = [job for job, r in zip(everyone, results, strict=True) if isinstance(r, Exception)]
    assert failed == [clash]
    assert isinstance(results[everyone.index(clash)], StoreError)
    for job in jobs:
        stored, created = results[everyone.index(job)]  # type: ignore[misc]
        assert created and stored.id == job.id and stored.payload == job.payload
    holders = {results[everyone.index(job)][0].id for job in keyed}  # type: ignore[index]
    assert len(holders) == 1
    assert sum(results[everyone.index(job)][1] for job in keyed) == 1  # type: ignore[index]
    page = await store.list_jobs(JobFilter(), 1000)
    assert len(page.items) == 1 + 150 + 1
    assert (await store.get_job(taken.id)).payload == {}  # type: ignore[union-attr]
    if isinstance(store, PostgresStore):  # the key-less jobs went in far fewer statements
        grouped = store._grouped
        assert grouped.items == 1 + 150 + 1 and grouped.statements < 20


def _batch_fields(n: int, at: datetime) -> dict[str, object]:
    """Job n of a batch whose every field differs from job to job, some unset."""
    return {
        "tenant_id": f"t{n}",
        "use_case": f"u{n}",
        "priority": list(Priority)[n % 4],
        "max_attempts": n + 1,
        "delay": None if n % 2 else 30.0 * n,
        "run_at": at + timedelta(minutes=n) if n % 2 else None,
        "delay_tolerance_seconds": 10.0 * n,
        "timeout_seconds": None if n == 0 else 1.5 * n,
        "idempotency_key": None if n == 1 else f"key{n}",
        "webhook_url": None if n == 2 else f"https://example.test/{n}",
        "backoff": None if n == 3 else Backoff.constant(n + 1),
        "expires_at": None if n == 0 else at + timedelta(days=n),
    }


@pytest.mark.parametrize("varying", [True, False], ids=["every-field-varies", "fields-shared"])
async def test_batch_insert_stores_each_jobs_own_fields(store: JobStore, varying: bool) -> None:
    """A batch whose jobs differ in every field, and one whose jobs share every field but
    id and payload: each job is stored with exactly its own values."""
    at = datetime.now(UTC).replace(microsecond=0) + timedelta(hours=1)
    fields = [_batch_fields(n if varying else 1, at) for n in range(4)]
    if not varying:
        fields = [{**f, "idempotency_key": None} for f in fields]
    news = [new_job(f"type{n}" if varying else "same", {"n": n}, **f) for n, f in enumerate(fields)]
    before = datetime.now(UTC) - timedelta(seconds=5)
    results = await store.insert_jobs(news)
    for new, (returned, created), f in zip(news, results, fields, strict=True):
        assert created
        fetched = await store.get_job(new.id)
        assert fetched is not None
        for got in (returned, fetched):
            assert (got.type, got.payload) == (new.type, new.payload)
            assert (got.tenant_id, got.use_case) == (f["tenant_id"], f["use_case"])
            assert got.priority is f["priority"]
            assert got.max_attempts == f["max_attempts"]
            if f["run_at"] is not None:
                assert got.run_at == f["run_at"]
            else:
                delay = timedelta(seconds=f["delay"])  # type: ignore[arg-type]
                assert before + delay <= got.run_at <= datetime.now(UTC) + delay
            assert got.deadline_at - got.run_at == timedelta(
                seconds=f["delay_tolerance_seconds"]  # type: ignore[arg-type]
            )
            assert got.timeout_seconds == f["timeout_seconds"]
            assert got.idempotency_key == f["idempotency_key"]
            assert got.webhook_url == f["webhook_url"]
            assert got.backoff == f["backoff"]
            assert got.expires_at == f["expires_at"]
        assert returned == fetched  # the times the store chose included


async def test_batch_insert_is_all_or_nothing(store: JobStore) -> None:
    good = new_job()
    duplicate = new_job()
    clash = new_job(job_id=duplicate.id)
    with pytest.raises(StoreError):
        await store.insert_jobs([good, duplicate, clash])
    assert await store.get_job(good.id) is None
    results = await store.insert_jobs([new_job(idempotency_key="a"), new_job(idempotency_key="a")])
    assert [created for _, created in results] == [True, False]
    assert results[0][0].id == results[1][0].id


async def test_a_key_used_for_another_request_fails_the_whole_batch(store: JobStore) -> None:
    """All or nothing (DESIGN: ``POST /jobs/batch``): a batch whose key its tenant used for
    another payload, before or earlier in the same batch, stores none of its jobs."""
    held, _ = await store.insert_job(new_job(payload={"v": 1}, idempotency_key="K"))
    for batch in (
        [new_job(payload={"n": 1}), new_job(payload={"v": 2}, idempotency_key="K")],
        [
            new_job(payload={"n": 2}, idempotency_key="L"),
            new_job(payload={"n": 3}),
            new_job(payload={"other": True}, idempotency_key="L"),
        ],
    ):
        with pytest.raises(IdempotencyConflictError):
            await store.insert_jobs(batch)
    assert [job.id for job in (await store.list_jobs(JobFilter(), 10)).items] == [held.id]
    with pytest.raises(IdempotencyConflictError):
        await store.insert_job(new_job(payload={"v": 2}, idempotency_key="K"))
    with pytest.raises(IdempotencyConflictError):
        await store.insert_job(new_job("other_type", payload={"v": 1}, idempotency_key="K"))


@pytest.mark.parametrize("payload", [{"big": 1e23}, {"max": 1.79e308}, {"zero": -0.0}])
async def test_a_repeated_request_gets_its_job_whatever_the_store_made_of_its_numbers(
    app: JobApp, payload: dict[str, Any]
) -> None:
    """PostgreSQL's jsonb gives 1e23 back as an integer and -0.0 as 0: still the same
    request, so the same job, one by one and in a batch (it was a 409 on PostgreSQL)."""
    first = await app.enqueue("echo", payload, idempotency_key="n")
    again, created = await app.enqueue_checked(EnqueueRequest("echo", payload, idempotency_key="n"))
    [batched] = await app.enqueue_many([EnqueueRequest("echo", payload, idempotency_key="n")])
    assert not created and again.id == batched.id == first.id


async def test_a_stored_payload_is_the_stores_own_copy_as_json_gives_it_back(
    store: JobStore,
) -> None:
    items = [1]
    job, _ = await store.insert_job(new_job(payload={"items": items, "pair": (1, 2)}))
    items.append(2)  # the caller's object changes after the enqueue; the stored job does not
    stored = await store.get_job(job.id)
    assert stored is not None and stored.payload == {"items": [1], "pair": [1, 2]}


async def test_a_job_past_its_expiry_is_not_retried_and_the_error_says_why(app: JobApp) -> None:
    job = await app.enqueue("echo", {}, delay=60, expires_at=datetime.now(UTC) + timedelta(days=1))
    await age_leases(app.store, [job.id], seconds=2 * 86400, column="expires_at")
    assert [expired.id for expired in await app.store.expire_jobs(100)] == [job.id]
    with pytest.raises(InvalidTransitionError, match="would only expire again"):
        await app.retry(job.id)
    assert (await app.get_job(job.id)).status is JobState.CANCELLED


# Batches longer than one statement of the PostgreSQL store (STATEMENT_JOBS) are written in
# several statements of one transaction while the next jobs are drawn.
LONG_BATCH = sum(STATEMENT_JOBS) + STATEMENT_JOBS[1] + 100  # four statements


async def test_a_long_batch_drawn_lazily_stores_nothing_when_drawing_fails(
    store: JobStore,
) -> None:
    """Three statements are written before the fourth list of jobs cannot be drawn."""

    def jobs() -> Iterator[NewJob]:
        for n in range(LONG_BATCH):
            if n == LONG_BATCH - 50:
                raise InvalidJobError("job refused while drawing", field="payload")
            yield new_job(payload={"n": n})

    with pytest.raises(InvalidJobError, match="refused while drawing"):
        await store.insert_jobs(jobs())
    assert (await store.list_jobs(JobFilter(), 10)).items == []
    job, created = await store.insert_job(new_job())  # the store goes on
    assert created and await store.get_job(job.id) == job


async def test_a_long_batch_failing_in_a_later_statement_stores_nothing(store: JobStore) -> None:
    news = [new_job(payload={"n": n}) for n in range(LONG_BATCH)]
    news[-1] = new_job(job_id=news[3].id)
    with pytest.raises(StoreError):
        await store.insert_jobs(iter(news))
    assert (await store.list_jobs(JobFilter(), 10)).items == []


async def test_a_long_batch_repeating_a_key_across_statements_gets_its_holder(
    store: JobStore,
) -> None:
    news = [new_job(payload={"n": n}) for n in range(LONG_BATCH)]
    news[0] = new_job(idempotency_key="k")
    news[-1] = new_job(idempotency_key="k")
    results = await store.insert_jobs(iter(news))
    assert [job.id for job, _ in results[:-1]] == [job.id for job in news[:-1]]
    assert all(created for _, created in results[:-1])
    assert results[-1] == (results[0][0], False)
    assert len((await store.list_jobs(JobFilter(), 1000)).items) == LONG_BATCH - 1


@pytest.mark.parametrize("delay", [0.0, 30.0])
async def test_a_long_batch_of_like_jobs_comes_back_as_stored(
    store: JobStore, delay: float
) -> None:
    """Jobs that share every field but id and payload: the PostgreSQL store reads back one
    row of times per statement (``insert_jobs_alike``) instead of one per job."""
    news = [new_job(payload={"n": n}, delay=delay) for n in range(LONG_BATCH)]
    results = await store.insert_jobs(iter(news))
    assert [job.id for job, _ in results] == [job.id for job in news]
    for job, created in results:
        assert created and await store.get_job(job.id) == job
    if isinstance(store, PostgresStore):  # one transaction's now(): one run_at and deadline
        assert len({(job.run_at, job.deadline_at) for job, _ in results}) == 1
    for job, _ in results:  # created_at is each job's id's time (SQLite: its millisecond)
        assert timedelta(0) <= time_of_id(job.id) - job.created_at < timedelta(milliseconds=1)


async def test_batch_times_that_disagree_are_read_per_job(
    store: JobStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Should the jobs of an ``insert_jobs_alike`` statement get different times after all,
    each job's are read back (here the statement is made to say so)."""
    if not isinstance(store, PostgresStore):
        pytest.skip("the PostgreSQL store's statement")
    from async_jobs.stores.postgres.queries import QUERIES

    query = QUERIES["insert_jobs_alike"]
    assert "min(run_at) AS run_at" in query and "max(run_at) AS" in query
    # Both ends are made wrong: only the times read back per job match the stored ones.
    monkeypatch.setitem(
        QUERIES,
        "insert_jobs_alike",
        query.replace("min(run_at) AS", "min(run_at) - interval '1 ms' AS").replace(
            "max(run_at) AS", "max(run_at) + interval '1 ms' AS"
        ),
    )
    news = [new_job(payload={"n": n}) for n in range(LONG_BATCH)]
    results = await store.insert_jobs(iter(news))
    assert [job.id for job, _ in results] == [job.id for job in news]
    for job, created in results:
        assert created and await store.get_job(job.id) == job


async def test_warm_changes_no_job(store: JobStore) -> None:
    """``warm`` runs the worker's statements with arguments that match nothing."""
    await store.insert_job(new_job(priority="high"))
    pending, _ = await store.insert_job(new_job(priority="low"))
    (running,) = await store.claim_jobs(claim(limit=1))  # the high one
    await store.warm()
    assert await store.get_job(running.id) == running
    assert await store.get_job(pending.id) == pending
    if isinstance(store, PostgresStore):  # its connections are open and stay in the pool
        assert store._pool is not None and store._pool.get_size() >= 3


async def test_claim_orders_by_priority_then_deadline(store: JobStore) -> None:
    jobs = [
        new_job("a", priority="low", delay_tolerance_seconds=1),
        new_job("b", priority="medium", delay_tolerance_seconds=100),
        new_job("c", priority="medium", delay_tolerance_seconds=10),
        new_job("d", priority="critical", delay_tolerance_seconds=1000),
        new_job("e", priority="high", delay_tolerance_seconds=500),
    ]
    await store.insert_jobs(jobs)
    first = await store.claim_jobs(claim(limit=2))
    rest = await store.claim_jobs(claim(limit=10))
    assert [j.type for j in first] == ["d", "e"]
    assert [j.type for j in rest] == ["c", "b", "a"]


async def test_claim_takes_only_due_jobs_of_the_asked_use_cases_and_types(
    store: JobStore,
) -> None:
    await store.insert_jobs(
        [
            new_job("later", delay=3600),
            new_job("x", use_case="mail"),
            new_job("y", use_case="mail"),
            new_job("x", use_case="sms"),
            new_job("x", run_at=datetime.now(UTC) - timedelta(seconds=5)),
        ]
    )
    assert [j.use_case for j in await store.claim_jobs(claim(use_cases=("sms",)))] == ["sms"]
    mail = await store.claim_jobs(claim(use_cases=("mail",), types=("y",)))
    assert [(j.use_case, j.type) for j in mail] == [("mail", "y")]
    rest = await store.claim_jobs(claim())
    assert sorted(j.type for j in rest) == ["x", "x"]
    assert await store.claim_jobs(claim()) == []


async def test_claim_leases_the_job(store: JobStore) -> None:
    job, _ = await store.insert_job(new_job())
    (claimed,) = await store.claim_jobs(claim())
    assert claimed.id == job.id
    assert claimed.status is JobState.RUNNING
    assert claimed.attempts == 1
    assert claimed.lease_token is not None
    assert claimed.worker_id == "w1"
    assert claimed.lease_expires_at is not None and claimed.started_at is not None
    assert claimed.lease_expires_at - claimed.started_at == pytest.approx(
        timedelta(seconds=30), abs=timedelta(seconds=1)
    )
    stored = await store.get_job(job.id)
    assert stored is not None and stored.lease_token == claimed.lease_token


async def test_concurrent_claims_never_share_a_job(store: JobStore) -> None:
    await store.insert_jobs([new_job() for _ in range(60)])
    batches = await asyncio.gather(*(store.claim_jobs(claim(limit=7)) for _ in range(12)))
    ids = [j.id for batch in batches for j in batch]
    assert len(ids) == 60
    assert len(set(ids)) == 60


async def test_outcomes_are_fenced_by_attempt_and_lease_token(store: JobStore) -> None:
    await store.insert_job(new_job())
    (job,) = await store.claim_jobs(claim())
    stale = [
        AttemptOutcome(job.id, job.attempts, LeaseToken(uuid.uuid4()), OutcomeKind.FAILED),
        AttemptOutcome(job.id, job.attempts + 1, LeaseToken(job.lease_token), OutcomeKind.FAILED),  # type: ignore[arg-type]
    ]
    assert await store.record_outcomes(stale) == []
    assert await store.record_outcomes([outcome(job, OutcomeKind.SUCCEEDED, result={"ok": 1})]) == [
        job.id
    ]
    late = outcome(job, OutcomeKind.FAILED, error=JobError("Late", "too late"))
    assert await store.record_outcomes([late]) == []
    done = await store.get_job(job.id)
    assert done is not None
    assert done.status is JobState.SUCCEEDED
    assert done.result == {"ok": 1}
    assert done.error is None
    assert done.finished_at is not None and done.lease_token is None


@pytest.mark.stores("sqlite", "postgres")
async def test_text_a_sql_store_cannot_encode_is_its_store_error_and_writes_nothing(
    store: JobStore,
) -> None:
    """A lone surrogate (what surrogateescape makes of a byte that is not UTF-8) reaches a
    store only when a caller skips the worker's checks: the store says so with its own error
    (the worker's outcome writer tells that from an outage), not a raw driver error."""
    await store.insert_jobs([new_job(), new_job()])
    first, second = await store.claim_jobs(claim())
    name = b"caf\xff.txt".decode("utf-8", "surrogateescape")
    unencodable = outcome(first, OutcomeKind.FAILED, error=JobError("OSError", name))
    with pytest.raises(StoreError):
        await store.record_outcomes([unencodable, outcome(second, OutcomeKind.SUCCEEDED)])
    assert first.lease_token is not None
    report = ProgressUpdate(first.id, first.attempts, LeaseToken(first.lease_token), 5.0, name)
    with pytest.raises(StoreError):
        await store.record_progress([report])
    for job in (first, second):
        stored = await store.get_job(job.id)
        assert stored is not None and (stored.status, stored.progress) == (JobState.RUNNING, None)


async def test_retry_returns_the_job_to_pending_later_and_keeps_the_error(
    store: JobStore,
) -> None:
    await store.insert_job(new_job(delay_tolerance_seconds=7))
    (job,) = await store.claim_jobs(claim())
    error = JobError("Boom", "it broke", "Traceback ...")
    retry = outcome(job, OutcomeKind.RETRY, error=error, retry_delay_seconds=3600)
    assert await store.record_outcomes([retry]) == [job.id]
    waiting = await store.get_job(job.id)
    assert waiting is not None
    assert waiting.status is JobState.PENDING
    assert waiting.attempts == 1
    assert waiting.error == error
    assert waiting.run_at > datetime.now(UTC) + timedelta(seconds=3500)
    assert waiting.deadline_at - waiting.run_at == timedelta(seconds=7)
    assert await store.claim_jobs(claim()) == []


async def test_retry_without_delay_is_claimed_again_as_the_next_attempt(store: JobStore) -> None:
    await store.insert_job(new_job())
    (job,) = await store.claim_jobs(claim())
    await store.record_outcomes([outcome(job, OutcomeKind.RETRY, error=JobError("E", "x"))])
    (again,) = await store.claim_jobs(claim())
    assert again.attempts == 2
    assert again.lease_token != job.lease_token


# More due jobs than a claim of 2 takes, in one tenant: the claim is in its drain mode (on
# PostgreSQL, a walk of the tenants with unmarked pending jobs, 0015), where a job written
# for the future must still be seen the moment it is due. It is written an hour ahead, then
# its run_at moved back by that hour, as if the hour had passed: a delay that real time
# must pass could run out before the first claim on a loaded machine.
BUSY = 5
LATER = 3600.0  # seconds: the delay of the jobs that become due during a test


@pytest.mark.parametrize("busy", [0, BUSY])
async def test_a_delayed_job_is_claimed_as_soon_as_it_is_due(store: JobStore, busy: int) -> None:
    await store.insert_jobs([new_job(tenant_id="busy") for _ in range(busy)])
    later, _ = await store.insert_job(new_job(tenant_id="later", delay=LATER))
    first = await store.claim_jobs(claim(2))
    assert later.id not in [j.id for j in first]
    await age_leases(store, [later.id], LATER, column="run_at")
    # Its tenant's first job has the first turn, like the busy tenant's next one.
    taken = await store.claim_jobs(claim(2))
    assert later.id in [j.id for j in taken]


@pytest.mark.parametrize("busy", [0, BUSY])
async def test_a_retry_with_backoff_is_claimed_as_soon_as_it_is_due(
    store: JobStore, busy: int
) -> None:
    await store.insert_job(new_job(tenant_id="retried"))
    (job,) = await store.claim_jobs(claim())
    await store.insert_jobs([new_job(tenant_id="busy") for _ in range(busy)])
    retry = outcome(job, OutcomeKind.RETRY, error=JobError("E", "x"), retry_delay_seconds=LATER)
    assert await store.record_outcomes([retry]) == [job.id]
    first = await store.claim_jobs(claim(2))
    assert job.id not in [j.id for j in first]
    waiting = await store.get_job(job.id)
    assert waiting is not None and waiting.status is JobState.PENDING
    await age_leases(store, [job.id], LATER, column="run_at")
    taken = {j.id: j for j in await store.claim_jobs(claim(2))}
    assert job.id in taken
    assert taken[job.id].attempts == 2


async def test_release_hands_the_job_back_without_spending_an_attempt(store: JobStore) -> None:
    await store.insert_job(new_job())
    (job,) = await store.claim_jobs(claim())
    assert await store.record_outcomes([outcome(job, OutcomeKind.RELEASED)]) == [job.id]
    back = await store.get_job(job.id)
    assert back is not None
    assert (back.status, back.attempts, back.started_at) == (JobState.PENDING, 0, None)
    (again,) = await store.claim_jobs(claim())
    assert again.attempts == 1


@pytest.mark.parametrize("kind", [OutcomeKind.FAILED, OutcomeKind.CANCELLED])
async def test_terminal_failures_are_recorded(store: JobStore, kind: OutcomeKind) -> None:
    await store.insert_job(new_job())
    (job,) = await store.claim_jobs(claim())
    await store.record_outcomes([outcome(job, kind, error=JobError("E", "m"))])
    ended = await store.get_job(job.id)
    assert ended is not None
    assert ended.status.value == kind.value
    assert ended.status.is_terminal and ended.finished_at is not None


async def test_extend_leases_renews_only_jobs_still_held(store: JobStore) -> None:
    await store.insert_jobs([new_job(), new_job()])
    first, second = await store.claim_jobs(claim())
    await store.record_outcomes([outcome(first, OutcomeKind.SUCCEEDED)])
    claims = [(j.id, j.attempts, LeaseToken(j.lease_token)) for j in (first, second)]  # type: ignore[arg-type]
    held = await store.extend_leases(claims, 120)
    assert held == [LeaseState(second.id, cancel_requested=False)]
    renewed = await store.get_job(second.id)
    assert renewed is not None and renewed.lease_expires_at is not None
    assert renewed.lease_expires_at > datetime.now(UTC) + timedelta(seconds=100)


async def test_list_pages_newest_first_and_filters(store: JobStore) -> None:
    made = []
    for i in range(7):
        job, _ = await store.insert_job(
            new_job("even" if i % 2 == 0 else "odd", tenant_id="t1" if i < 5 else "t2")
        )
        made.append(job)
    seen = []
    page = await store.list_jobs(JobFilter(), 3)
    seen += page.items
    while page.next_cursor is not None:
        page = await store.list_jobs(JobFilter(), 3, page.next_cursor)
        seen += page.items
    assert len(seen) == 7
    assert {j.id for j in seen} == {j.id for j in made}
    keys = [(j.created_at, j.id) for j in seen]
    assert keys == sorted(keys, reverse=True)
    odd_t1 = await store.list_jobs(JobFilter(tenant_id="t1", type="odd"), 100)
    assert len(odd_t1.items) == 2 and odd_t1.next_cursor is None
    running = await store.list_jobs(JobFilter(status=JobState.RUNNING), 100)
    assert running.items == []
    window = await store.list_jobs(
        JobFilter(created_after=made[0].created_at - timedelta(seconds=1)), 100
    )
    assert len(window.items) == 7


async def test_a_jobs_created_at_is_its_ids_time_and_the_newest_lists_first(
    store: JobStore,
) -> None:
    """Jobs enqueued back to back (several in one millisecond): each created_at is its id's
    time, to the store's precision (SQLite keeps the millisecond), and newest first is the
    reverse order of enqueueing."""
    made = [(await store.insert_job(new_job(payload={"n": n})))[0] for n in range(20)]
    for job in made:
        assert timedelta(0) <= time_of_id(job.id) - job.created_at < timedelta(milliseconds=1)
        assert await store.get_job(job.id) == job
    page = await store.list_jobs(JobFilter(), 100)
    assert [j.id for j in page.items] == [j.id for j in reversed(made)]
    after = made[9].created_at
    newest = await store.list_jobs(JobFilter(created_after=after), 100)
    assert [j.id for j in newest.items] == [j.id for j in reversed(made) if j.created_at > after]


async def test_list_and_count_filter_by_priority(store: JobStore) -> None:
    high, _ = await store.insert_job(new_job(priority=Priority.HIGH))
    await store.insert_job(new_job(priority=Priority.LOW))
    await store.insert_job(new_job())
    page = await store.list_jobs(JobFilter(priority=Priority.HIGH), 10)
    assert [j.id for j in page.items] == [high.id]
    assert await store.count_jobs(JobFilter(priority=Priority.LOW), 10) == 1
    assert await store.count_jobs(JobFilter(priority=Priority.CRITICAL), 10) == 0
    assert await store.count_jobs(JobFilter(), 10) == 3


EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
EARLIEST = datetime.min.replace(tzinfo=UTC)  # asyncpg sends it as -infinity
LATEST = datetime.max.replace(tzinfo=UTC)  # and this as infinity


@pytest.mark.parametrize(
    ("where", "matching"),
    [
        (JobFilter(created_after=EARLIEST), 1),
        (JobFilter(created_after=EPOCH - timedelta(days=1)), 1),
        (JobFilter(created_after=EPOCH + timedelta(seconds=30)), 1),
        (JobFilter(created_before=LATEST), 1),
        (JobFilter(created_after=EARLIEST, created_before=LATEST), 1),
        (JobFilter(created_after=LATEST), 0),
        (JobFilter(created_before=EARLIEST), 0),
        (JobFilter(created_before=EPOCH - timedelta(days=1)), 0),
    ],
    ids=[
        "after-year-1",
        "after-1969",
        "after-the-epochs-first-minute",
        "before-9999",
        "between-the-limits",
        "after-9999",
        "before-year-1",
        "before-1969",
    ],
)
async def test_created_bounds_before_the_epoch_or_at_the_limits_of_time_list_alike(
    store: JobStore, where: JobFilter, matching: int
) -> None:
    """PostgreSQL bounds the ids by these times as well: a time before the Unix epoch (or
    less than a minute after it) listed nothing, and the least and largest times failed
    ("cannot convert infinity to bigint")."""
    await store.insert_job(new_job())
    assert len((await store.list_jobs(where, 10)).items) == matching
    assert await store.count_jobs(where, 10) == matching
    scan = await store.scan_jobs(ScanRequest(where=where, limit=10, budget=10))
    assert len(scan.items) == matching


NAIVE = datetime(2026, 1, 1)  # without its time zone
BEFORE_YEAR_1 = datetime(1, 1, 1, tzinfo=timezone(timedelta(hours=14)))  # in UTC
BAD_READS: list[tuple[str, Callable[[JobApp, Job], Awaitable[object]]]] = [
    ("created_after", lambda app, job: app.list_jobs(JobFilter(created_after=NAIVE))),
    ("created_before", lambda app, job: app.count_jobs(JobFilter(created_before=NAIVE), 9)),
    ("created_after", lambda app, job: app.scan_jobs(JobFilter(created_after=NAIVE), budget=9)),
    ("created_after", lambda app, job: app.list_jobs(JobFilter(created_after=BEFORE_YEAR_1))),
    ("type", lambda app, job: app.list_jobs(JobFilter(type="a\x00b"))),
    ("use_case", lambda app, job: app.count_jobs(JobFilter(use_case="\x00"), 9)),
    ("tenant_id", lambda app, job: app.scan_jobs(JobFilter(tenant_id="t\x00"), budget=9)),
    ("tenant_id", lambda app, job: app.list_jobs(JobFilter(tenant_id="\ud800"))),
    ("idempotency_key", lambda app, job: app.find_by_idempotency_key("k\x00", None)),
    ("tenant_id", lambda app, job: app.find_by_idempotency_key("k", "t\x00")),
    ("tenant_id", lambda app, job: app.get_job(job.id, "t\x00")),
    ("tenant_id", lambda app, job: app.wait_for(job.id, 0.01, "t\x00")),
    ("tenant_id", lambda app, job: app.cancel(job.id, "t\x00")),
    ("tenant_id", lambda app, job: app.retry(job.id, "t\x00")),
    ("tenant_id", lambda app, job: app.stats("t\x00")),
]


async def test_bad_read_input_is_an_invalid_job_error_naming_the_field_on_every_store(
    app: JobApp,
) -> None:
    """Checked by ``JobApp`` for every store: PostgreSQL failed on a NUL (StoreError) where
    SQLite and memory found nothing, and a naive time was local time to PostgreSQL, UTC to
    SQLite and a TypeError in memory."""
    job = await app.enqueue("echo", {}, delay=3600)
    refused = []
    for _, read in BAD_READS:
        with pytest.raises(InvalidJobError) as caught:
            await read(app, job)
        refused.append(caught.value.details.get("field"))
    assert refused == [field for field, _ in BAD_READS]
    assert (await app.get_job(job.id)).status is JobState.PENDING
    # A time in another zone is the same instant in UTC, in every store.
    ahead = timezone(timedelta(hours=5))
    since = (job.created_at - timedelta(seconds=1)).astimezone(ahead)
    assert [j.id for j in (await app.list_jobs(JobFilter(created_after=since))).items] == [job.id]
    assert await app.count_jobs(JobFilter(created_before=since), 9) == 0


async def test_wait_for_jobs_wakes_on_insert(store: JobStore) -> None:
    await store.wait_for_jobs(0.01)  # consume an earlier wake-up, and start listening
    wakeup = watch_wakeup(store)
    loop = asyncio.get_running_loop()
    waiter = asyncio.create_task(store.wait_for_jobs(10))
    await asyncio.wait_for(wakeup.awaited.wait(), 5)  # the waiter waits: insert now
    started = loop.time()
    await store.insert_job(new_job())
    await asyncio.wait_for(waiter, 5)
    assert loop.time() - started < 5


async def test_the_rollup_counts_ended_jobs_per_minute_tenant_and_all_tenants(
    store: JobStore,
) -> None:
    for tenant in ("t1", "t1", "t2"):
        await store.insert_job(new_job(use_case="mail", tenant_id=tenant))
    await store.insert_job(new_job(use_case="sms", tenant_id="t2"))
    jobs = await store.claim_jobs(claim())
    assert len(jobs) == 4
    left, _ = await store.insert_job(new_job(use_case="sms", tenant_id="t1"))
    await store.record_outcomes(
        [outcome(j, OutcomeKind.SUCCEEDED) for j in jobs if j.use_case == "mail"]
        + [outcome(j, OutcomeKind.FAILED) for j in jobs if j.use_case == "sms"]
    )
    await store.cancel_job(left.id)
    assert await store.roll_up_finished(120) > 0
    # Again: the same rows, replaced, not added to.
    await store.roll_up_finished(120)

    every = await store.read_rollup(None, 3600)
    assert sum(r.succeeded for r in every.rows if r.use_case == "mail") == 3
    assert sum(r.failed for r in every.rows if r.use_case == "sms") == 1
    assert sum(r.cancelled for r in every.rows if r.use_case == "sms") == 1
    assert sum(sum(r.run_hist.values()) for r in every.rows) == 4  # the cancelled one never ran
    assert sum(sum(r.wait_hist.values()) for r in every.rows) == 4
    assert all(r.minute <= every.generated_at for r in every.rows)

    t2 = await store.read_rollup("t2", 3600)
    assert sum(r.succeeded for r in t2.rows) == 1 and sum(r.failed for r in t2.rows) == 1
    assert sum(r.cancelled for r in t2.rows) == 0

    assert await store.delete_rollup(-120) > 0  # every row began before two minutes from now
    assert (await store.read_rollup(None, 3600)).rows == []


async def test_the_rollup_keeps_the_span_it_covered_for_the_next_leader(store: JobStore) -> None:
    assert await store.rolled_up() is None  # never rolled up
    await store.roll_up_finished(900)
    span = await store.rolled_up()
    assert span is not None
    begins, ends = span
    # From the start of the minute 15 minutes ago to the run's own time.
    assert 900 <= begins < 960 + 5 and 0 <= ends < 5
    # An older chunk that meets the span extends it back; the end stays.
    await store.roll_up_finished(1800, 900)
    begins, ends = await store.rolled_up() or (0.0, 0.0)
    assert 1800 <= begins < 1860 + 5 and 0 <= ends < 5
    # A span that does not meet it and ends earlier leaves it as it was.
    await store.roll_up_finished(7200, 5400)
    assert 1800 <= (await store.rolled_up() or (0.0, 0.0))[0] < 1860 + 5


async def test_the_rollup_window_gives_the_oldest_due_job_per_use_case(store: JobStore) -> None:
    past = datetime.now(UTC) - timedelta(seconds=30)
    await store.insert_job(new_job(use_case="mail", tenant_id="t1", run_at=past))
    await store.insert_job(new_job(use_case="mail", tenant_id="t2"))
    await store.insert_job(new_job(use_case="sms", tenant_id="t2", delay=3600))  # not due
    every = await store.read_rollup(None, 3600)
    assert set(every.oldest_due_seconds) == {"mail"}
    assert 25 <= every.oldest_due_seconds["mail"] < 300
    t2 = await store.read_rollup("t2", 3600)
    assert t2.oldest_due_seconds["mail"] < 25
