"""One suite, every store: what the scheduler relies on. Per-use-case concurrency, tenant
quotas (max_running, the rate bucket, max_pending), fair turns between tenants, pausing,
expiry, retention, leadership, periodic ticks and stats.

Time-sensitive arithmetic is checked exactly on a memory store with a clock of the test's
(the tests at the end); the shared tests only rely on short real waits via ``wait_until``.
"""

from __future__ import annotations

import asyncio
import dataclasses
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from async_jobs.domain.errors import InvalidJobError, QuotaExceededError
from async_jobs.domain.jobs import (
    AttemptOutcome,
    ClaimRequest,
    Job,
    JobFilter,
    JobState,
    LeaseToken,
    NewJob,
    OutcomeKind,
    Reason,
)
from async_jobs.domain.scheduling import Limits, TenantQuota
from async_jobs.domain.workers import ProcessInfo, ProcessKind
from async_jobs.ports import JobStore
from async_jobs.stores.memory import MemoryStore
from tests.helpers import new_job, wait_until

UNCAPPED = Limits(default_max_concurrent=1_000_000)


def claim(limit: int = 10, limits: Limits = UNCAPPED, **kw: Any) -> ClaimRequest:
    return ClaimRequest(worker_id="w1", limit=limit, lease_seconds=30, limits=limits, **kw)


def quotas(tenant: str, use_case: str, **quota: Any) -> Limits:
    return Limits(
        default_max_concurrent=1_000_000, quotas={tenant: {use_case: TenantQuota(**quota)}}
    )


def bounded(max_pending: int, **kw: Any) -> NewJob:
    """A job whose enqueue carries the tenant's max_pending, as ``JobApp`` sets it."""
    return dataclasses.replace(new_job(**kw), max_pending=max_pending)


async def insert(store: JobStore, count: int, **kw: Any) -> list[Job]:
    return [job for job, _ in await store.insert_jobs([new_job(**kw) for _ in range(count)])]


async def finish(
    store: JobStore, jobs: list[Job], kind: OutcomeKind = OutcomeKind.SUCCEEDED
) -> None:
    outcomes = []
    for job in jobs:
        assert job.lease_token is not None
        outcomes.append(AttemptOutcome(job.id, job.attempts, LeaseToken(job.lease_token), kind))
    assert len(await store.record_outcomes(outcomes)) == len(jobs)


async def count(store: JobStore, status: JobState, **where: Any) -> int:
    page = await store.list_jobs(JobFilter(status=status, **where), 1000)
    return len(page.items)


# -- per use case: max_concurrent ------------------------------------------------------------


async def test_a_use_case_never_holds_more_than_its_max_concurrent(store: JobStore) -> None:
    limits = Limits(max_concurrent={"mail": 3})
    await insert(store, 10, use_case="mail")
    await insert(store, 5, use_case="sms")
    first = await store.claim_jobs(claim(2, limits, use_cases=("mail",)))
    second = await store.claim_jobs(claim(5, limits, use_cases=("mail",)))
    assert (len(first), len(second)) == (2, 1)
    assert await store.claim_jobs(claim(5, limits, use_cases=("mail",))) == []
    # Another use case is not bound by it (it has no cap of its own).
    assert len(await store.claim_jobs(claim(10, limits, use_cases=("sms",)))) == 5
    assert await count(store, JobState.RUNNING, use_case="mail") == 3

    # Each recorded outcome frees its slot: succeeded, a retry, a release.
    await finish(store, first[:1])
    (third,) = await store.claim_jobs(claim(5, limits))
    assert third.use_case == "mail"
    await finish(store, [first[1]], OutcomeKind.RETRY)
    await finish(store, second, OutcomeKind.RELEASED)
    assert len(await store.claim_jobs(claim(5, limits))) == 2
    assert await store.claim_jobs(claim(5, limits)) == []
    assert await count(store, JobState.RUNNING, use_case="mail") == 3


async def test_a_use_case_without_max_concurrent_has_no_cap(store: JobStore) -> None:
    await insert(store, 15, use_case="bulk")
    await insert(store, 3, use_case="other")
    claimed = await store.claim_jobs(claim(20, Limits(max_concurrent={"other": 2})))
    by_use_case = {uc: sum(j.use_case == uc for j in claimed) for uc in ("bulk", "other")}
    assert by_use_case == {"bulk": 15, "other": 2}
    assert await store.claim_jobs(claim(20, Limits(max_concurrent={"other": 2}))) == []


async def test_a_default_max_concurrent_caps_every_use_case_without_its_own(
    store: JobStore,
) -> None:
    limits = Limits(default_max_concurrent=10, max_concurrent={"other": 2})
    await insert(store, 15, use_case="bulk")
    await insert(store, 3, use_case="other")
    claimed = await store.claim_jobs(claim(20, limits))
    by_use_case = {uc: sum(j.use_case == uc for j in claimed) for uc in ("bulk", "other")}
    assert by_use_case == {"bulk": 10, "other": 2}
    assert await store.claim_jobs(claim(20, limits)) == []


async def test_concurrent_claimers_of_an_uncapped_use_case_never_share_a_job(
    store: JobStore,
) -> None:
    # No lock and no count: the claimers run side by side and skip each other's rows.
    await insert(store, 40, use_case="bulk", tenant_id="t1")
    await insert(store, 20, use_case="bulk", tenant_id="t2")
    batches = await asyncio.gather(*(store.claim_jobs(claim(7, Limits())) for _ in range(12)))
    ids = [job.id for batch in batches for job in batch]
    assert len(ids) == len(set(ids))
    rest = await store.claim_jobs(claim(100, Limits()))
    assert len(ids) + len(rest) == 60
    assert await count(store, JobState.PENDING) == 0


async def test_concurrent_claimers_share_the_use_case_slots(store: JobStore) -> None:
    limits = Limits(max_concurrent={"mail": 4})
    await insert(store, 30, use_case="mail")
    batches = await asyncio.gather(*(store.claim_jobs(claim(3, limits)) for _ in range(8)))
    ids = [job.id for batch in batches for job in batch]
    assert len(ids) == len(set(ids)) == 4
    assert await count(store, JobState.RUNNING) == 4


# -- per tenant: max_running, the rate bucket ------------------------------------------------


async def test_a_tenant_never_runs_more_than_its_max_running(store: JobStore) -> None:
    limits = quotas("t1", "mail", max_running=2)
    await insert(store, 5, tenant_id="t1", use_case="mail")
    await insert(store, 5, tenant_id="t2", use_case="mail")
    await insert(store, 3, tenant_id="t1", use_case="sms")
    claimed = await store.claim_jobs(claim(20, limits))
    taken = {(j.tenant_id, j.use_case): 0 for j in claimed}
    for job in claimed:
        taken[(job.tenant_id, job.use_case)] += 1
    # The quota binds t1 in mail only: t2, and t1 in another use case, are free.
    assert taken == {("t1", "mail"): 2, ("t2", "mail"): 5, ("t1", "sms"): 3}
    assert await store.claim_jobs(claim(20, limits)) == []
    await finish(store, [next(j for j in claimed if j.tenant_id == "t1" and j.use_case == "mail")])
    (again,) = await store.claim_jobs(claim(20, limits))
    assert (again.tenant_id, again.use_case) == ("t1", "mail")


async def test_a_tenants_star_quota_binds_each_use_case_without_its_own(store: JobStore) -> None:
    limits = Limits(
        default_max_concurrent=100,
        quotas={"t1": {"*": TenantQuota(max_running=1), "mail": TenantQuota(max_running=3)}},
    )
    await insert(store, 5, tenant_id="t1", use_case="mail")
    await insert(store, 5, tenant_id="t1", use_case="sms")
    await insert(store, 5, tenant_id="t1", use_case="push")
    claimed = await store.claim_jobs(claim(20, limits))
    assert sorted(j.use_case for j in claimed) == ["mail", "mail", "mail", "push", "sms"]


async def test_a_rate_quota_spends_its_bucket_then_refills(store: JobStore) -> None:
    # 2 starts per second: a full bucket holds 2 tokens, one more comes every 0.5 s.
    limits = quotas("t1", "*", max_per_second=2)
    await insert(store, 6, tenant_id="t1")
    await insert(store, 2, tenant_id="t2")
    claimed = await store.claim_jobs(claim(10, limits))
    assert sorted(j.tenant_id for j in claimed) == ["t1", "t1", "t2", "t2"]
    assert await store.claim_jobs(claim(10, limits)) == []
    refilled = await wait_until(lambda: store.claim_jobs(claim(10, limits)), timeout=5)
    assert [j.tenant_id for j in refilled] == ["t1"]


# -- order: priority, then tenants in turn ---------------------------------------------------


async def test_a_tenant_with_one_job_is_not_starved_by_a_backlog(store: JobStore) -> None:
    await insert(store, 200, tenant_id="a")
    (late,) = await insert(store, 1, tenant_id="b")
    claimed = await store.claim_jobs(claim(5))
    assert late.id in {j.id for j in claimed}
    assert sorted(j.tenant_id for j in claimed) == ["a", "a", "a", "a", "b"]


@pytest.mark.parametrize(("limit", "b_gets_its_turn"), [(3, False), (4, True)])
async def test_priority_comes_before_the_tenants_turns(
    store: JobStore, limit: int, b_gets_its_turn: bool
) -> None:
    high = await insert(store, 3, tenant_id="a", priority="high")
    await insert(store, 3, tenant_id="a", priority="low")
    (low,) = await insert(store, 1, tenant_id="b", priority="low")
    claimed = {j.id for j in await store.claim_jobs(claim(limit))}
    # a's high jobs first, though b has not had a turn; then b's low one, its first turn,
    # before a's low ones (a's fourth turn on).
    assert claimed == {j.id for j in high} | ({low.id} if b_gets_its_turn else set())


async def test_within_a_tenant_the_earliest_deadline_goes_first(store: JobStore) -> None:
    late = new_job(tenant_id="a", delay_tolerance_seconds=600)
    soon = new_job(tenant_id="a", delay_tolerance_seconds=5)
    other = new_job(tenant_id="b", delay_tolerance_seconds=900)
    await store.insert_jobs([late, soon, other])
    claimed = await store.claim_jobs(claim(2))
    assert {j.id for j in claimed} == {soon.id, other.id}


# -- pausing ---------------------------------------------------------------------------------


async def test_a_paused_use_case_is_not_claimed_until_resumed(store: JobStore) -> None:
    await insert(store, 2, use_case="mail")
    await insert(store, 1, use_case="sms")
    state = await store.set_paused("mail", True)
    assert (state.name, state.paused) == ("mail", True)
    assert state.updated_at is not None
    claimed = await store.claim_jobs(claim(10))
    assert [j.use_case for j in claimed] == ["sms"]
    assert await store.claim_jobs(claim(10, use_cases=("mail",))) == []
    await store.set_paused("ghost", True)  # paused before it has any job

    listed = {s.name: s for s in await store.list_use_cases()}
    assert [s.name for s in await store.list_use_cases()] == ["ghost", "mail", "sms"]
    assert (listed["mail"].paused, listed["ghost"].paused) == (True, True)
    assert (listed["sms"].paused, listed["sms"].updated_at) == (False, None)

    resumed = await store.set_paused("mail", False)
    assert resumed.paused is False
    assert len(await store.claim_jobs(claim(10))) == 2
    listed = {s.name: s for s in await store.list_use_cases()}
    assert listed["mail"].paused is False


# -- expiry ----------------------------------------------------------------------------------


def expired(**kw: Any) -> NewJob:
    """A job whose expires_at has passed (validation refuses that; the store does not)."""
    past = datetime.now(UTC) - timedelta(seconds=5)
    return dataclasses.replace(new_job(**kw), expires_at=past)


async def test_expires_at_round_trips(store: JobStore) -> None:
    at = (datetime.now(UTC) + timedelta(hours=1)).replace(microsecond=250_000)
    job, _ = await store.insert_job(new_job(expires_at=at))
    (listed,) = await store.insert_jobs([new_job(expires_at=at)])
    fetched = await store.get_job(job.id)
    assert fetched is not None
    assert job.expires_at == fetched.expires_at == listed[0].expires_at == at
    (claimed, _) = await store.claim_jobs(claim(10))
    assert claimed.expires_at == at
    plain, _ = await store.insert_job(new_job())
    assert plain.expires_at is None


async def test_an_expired_job_is_never_claimed_and_expire_jobs_cancels_it(
    store: JobStore,
) -> None:
    gone = [expired() for _ in range(3)]
    await store.insert_jobs(gone)
    (fresh,) = await insert(store, 1, expires_at=datetime.now(UTC) + timedelta(hours=1))
    (claimed,) = await store.claim_jobs(claim(10))
    assert claimed.id == fresh.id

    first = await store.expire_jobs(2)
    second = await store.expire_jobs(2)
    assert (len(first), len(second)) == (2, 1)
    assert {j.id for j in first + second} == {j.id for j in gone}
    for job in first + second:
        assert job.status is JobState.CANCELLED
        assert job.reason == Reason.EXPIRED.value
        assert job.finished_at is not None
    stored = await store.get_job(gone[0].id)
    assert stored is not None and stored.status is JobState.CANCELLED
    assert stored.reason == "expired"
    assert await store.expire_jobs(10) == []
    running = await store.get_job(fresh.id)
    assert running is not None and running.status is JobState.RUNNING


# -- max_pending -----------------------------------------------------------------------------


async def test_max_pending_refuses_exactly_what_is_over_it(store: JobStore) -> None:
    await store.insert_jobs([bounded(3, tenant_id="t1", use_case="mail") for _ in range(2)])
    with pytest.raises(QuotaExceededError) as refused:
        await store.insert_jobs([bounded(3, tenant_id="t1", use_case="mail") for _ in range(2)])
    error = refused.value
    assert error.retry_after_seconds == 1.0
    assert "t1" in error.message and "mail" in error.message and "3" in error.message
    assert await count(store, JobState.PENDING, tenant_id="t1") == 2  # nothing of the batch

    await store.insert_job(bounded(3, tenant_id="t1", use_case="mail"))
    with pytest.raises(QuotaExceededError):
        await store.insert_job(bounded(3, tenant_id="t1", use_case="mail"))
    # Another use case, another tenant: not bound by t1's mail quota.
    await store.insert_job(bounded(3, tenant_id="t1", use_case="sms"))
    await store.insert_jobs([bounded(3, tenant_id="t2", use_case="mail") for _ in range(3)])
    assert await count(store, JobState.PENDING, tenant_id="t1", use_case="mail") == 3

    # A running job no longer waits: it frees a place.
    await store.claim_jobs(claim(1, use_cases=("mail",), limits=quotas("t2", "*", max_running=0)))
    await store.insert_job(bounded(3, tenant_id="t1", use_case="mail"))


async def test_max_pending_refuses_the_whole_batch(store: JobStore) -> None:
    await store.insert_job(bounded(1, tenant_id="t1", use_case="mail"))
    fine = bounded(5, tenant_id="t2", use_case="mail")
    over = bounded(1, tenant_id="t1", use_case="mail")
    with pytest.raises(QuotaExceededError):
        await store.insert_jobs([fine, over])
    assert await store.get_job(fine.id) is None
    assert await store.get_job(over.id) is None


async def test_a_repeated_idempotency_key_is_never_refused(store: JobStore) -> None:
    first, created = await store.insert_job(
        bounded(2, tenant_id="t1", use_case="mail", idempotency_key="k")
    )
    await store.insert_job(bounded(2, tenant_id="t1", use_case="mail"))
    again, created_again = await store.insert_job(
        bounded(2, tenant_id="t1", use_case="mail", idempotency_key="k")
    )
    assert created and not created_again and again.id == first.id
    # A batch of repeats (one of them twice) stores nothing new and is accepted...
    repeats = [bounded(2, tenant_id="t1", use_case="mail", idempotency_key="k") for _ in range(2)]
    assert [created for _, created in await store.insert_jobs(repeats)] == [False, False]
    # ... but a new key is a new job, refused while the tenant is at its limit.
    with pytest.raises(QuotaExceededError):
        await store.insert_job(bounded(2, tenant_id="t1", use_case="mail", idempotency_key="k2"))
    with pytest.raises(QuotaExceededError):
        await store.insert_jobs(
            [
                bounded(2, tenant_id="t1", use_case="mail", idempotency_key="k"),
                bounded(2, tenant_id="t1", use_case="mail", idempotency_key="k3"),
            ]
        )
    assert await count(store, JobState.PENDING, tenant_id="t1") == 2


async def test_a_batch_counts_a_key_it_repeats_once(store: JobStore) -> None:
    await store.insert_job(bounded(2, tenant_id="t1", use_case="mail"))
    same = [bounded(2, tenant_id="t1", use_case="mail", idempotency_key="k") for _ in range(2)]
    results = await store.insert_jobs(same)
    assert [created for _, created in results] == [True, False]
    assert await count(store, JobState.PENDING, tenant_id="t1") == 2


# -- retention -------------------------------------------------------------------------------


async def test_delete_finished_touches_only_that_state_and_age(store: JobStore) -> None:
    jobs = await insert(store, 6)
    done = await store.claim_jobs(claim(4))
    await finish(store, done[:2])
    await finish(store, done[2:3], OutcomeKind.FAILED)
    waiting = [j for j in jobs if j.id not in {d.id for d in done}]
    await store.cancel_job(waiting[0].id)
    # Now: 2 succeeded, 1 failed, 1 cancelled, 1 running, 1 pending, all just now.

    for state in ("succeeded", "failed", "cancelled"):
        assert await store.delete_finished(state, 3600, 100) == 0  # too young
    # (Some stores' clocks tick in milliseconds: "older than 0 s" may take one.)
    assert await wait_until(lambda: store.delete_finished("succeeded", 0.0, 1)) == 1
    assert await store.delete_finished("succeeded", 0.0, 100) == 1  # the limit held
    assert await store.delete_finished("succeeded", 0.0, 100) == 0
    for job in done[:2]:
        assert await store.get_job(job.id) is None
    states = sorted(j.status.value for j in (await store.list_jobs(JobFilter(), 100)).items)
    assert states == ["cancelled", "failed", "pending", "running"]
    assert await wait_until(lambda: store.delete_finished("failed", 0.0, 100)) == 1
    assert await wait_until(lambda: store.delete_finished("cancelled", 0.0, 100)) == 1
    states = sorted(j.status.value for j in (await store.list_jobs(JobFilter(), 100)).items)
    assert states == ["pending", "running"]


@pytest.mark.parametrize("status", ["pending", "running", "queued", "nonsense"])
async def test_delete_finished_refuses_a_state_that_is_not_terminal(
    store: JobStore, status: str
) -> None:
    with pytest.raises(InvalidJobError):
        await store.delete_finished(status, 0.0, 10)


async def test_a_deleted_jobs_idempotency_key_can_be_used_again(store: JobStore) -> None:
    job, _ = await store.insert_job(new_job(idempotency_key="k"))
    (running,) = await store.claim_jobs(claim(1))
    await finish(store, [running])
    assert await wait_until(lambda: store.delete_finished("succeeded", 0.0, 10)) == 1
    again, created = await store.insert_job(new_job(idempotency_key="k"))
    assert created and again.id != job.id


# -- leadership ------------------------------------------------------------------------------


async def test_one_holder_leads_until_it_resigns(store: JobStore) -> None:
    assert await store.try_lead("scheduler", "a", 30)
    assert not await store.try_lead("scheduler", "b", 30)
    assert await store.try_lead("scheduler", "a", 30)  # keeps it
    assert await store.try_lead("other-role", "b", 30)  # roles are independent
    await store.resign("scheduler", "b")  # not b's: nothing happens
    assert not await store.try_lead("scheduler", "b", 30)
    await store.resign("scheduler", "a")
    assert await store.try_lead("scheduler", "b", 30)
    assert not await store.try_lead("scheduler", "a", 30)


async def test_a_lapsed_lease_passes_the_lead_on(store: JobStore) -> None:
    assert await store.try_lead("scheduler", "a", 0.5)
    assert not await store.try_lead("scheduler", "b", 30)
    assert await wait_until(lambda: store.try_lead("scheduler", "b", 30), timeout=5)
    assert not await store.try_lead("scheduler", "a", 30)


async def test_the_current_leader_is_read_back_until_its_lease_lapses(store: JobStore) -> None:
    assert await store.current_leader("scheduler") is None
    assert await store.try_lead("scheduler", "worker/host:1:aa", 30)
    first = await store.current_leader("scheduler")
    assert first is not None
    assert (first.process_role, first.process_id) == ("worker", "host:1:aa")
    assert first.since <= first.expires_at
    assert first.expires_at - first.since == pytest.approx(
        timedelta(seconds=30), abs=timedelta(seconds=1)
    )
    assert await store.try_lead("scheduler", "worker/host:1:aa", 30)  # renewed: same since
    renewed = await store.current_leader("scheduler")
    assert renewed is not None and renewed.since == first.since
    await store.resign("scheduler", "worker/host:1:aa")
    assert await store.current_leader("scheduler") is None
    assert await store.try_lead("scheduler", "scheduler/host:2:bb", 0.3)
    # Nobody leads once the lease ran out (by the store's clock), though no one resigned.
    assert await wait_until(lambda: _none_leads(store), timeout=5)


async def _none_leads(store: JobStore) -> bool:
    return await store.current_leader("scheduler") is None


async def test_concurrent_candidates_elect_exactly_one(store: JobStore) -> None:
    won = await asyncio.gather(*(store.try_lead("scheduler", f"h{i}", 30) for i in range(10)))
    assert sum(won) == 1


# -- periodic ticks --------------------------------------------------------------------------


async def test_a_periodic_tick_only_moves_forward(store: JobStore) -> None:
    t0 = datetime(2030, 1, 1, 12, 0, tzinfo=UTC)
    assert await store.last_periodic_tick("nightly") is None
    assert await store.advance_periodic("nightly", t0)
    assert await store.last_periodic_tick("nightly") == t0
    assert not await store.advance_periodic("nightly", t0)
    assert not await store.advance_periodic("nightly", t0 - timedelta(minutes=1))
    assert await store.last_periodic_tick("nightly") == t0
    assert await store.advance_periodic("nightly", t0 + timedelta(minutes=1))
    assert await store.last_periodic_tick("nightly") == t0 + timedelta(minutes=1)
    assert await store.last_periodic_tick("hourly") is None


# -- stats -----------------------------------------------------------------------------------


async def test_stats_of_an_empty_store(store: JobStore) -> None:
    stats = await store.stats()
    assert stats.counts == []
    zero = {"succeeded": 0, "failed": 0, "cancelled": 0}
    assert stats.finished_last_minute == zero and stats.finished_last_hour == zero
    assert stats.run_seconds == {"p50": None, "p95": None, "p99": None}
    assert stats.queue_wait_seconds == {"p50": None, "p95": None, "p99": None}
    assert (stats.deadline_misses_last_hour, stats.overdue_pending) == (0, 0)
    assert stats.oldest_due_age_seconds is None
    assert stats.generated_at.tzinfo is not None
    assert stats.to_json()["throughput"] == {"last_minute": zero, "last_hour": zero}


async def test_stats_count_and_measure_what_happened(store: JobStore) -> None:
    now = datetime.now(UTC)
    # Due ten seconds ago, deadline one second later: late already.
    late = new_job(
        tenant_id="t1",
        use_case="mail",
        run_at=now - timedelta(seconds=10),
        delay_tolerance_seconds=1,
    )
    await store.insert_jobs([late])
    await insert(store, 3, tenant_id="t1", use_case="mail")
    await insert(store, 2, tenant_id="t2", use_case="sms")
    await insert(store, 1, tenant_id="t2", use_case="sms", delay=3600)  # not due
    started = await store.claim_jobs(claim(3, use_cases=("mail",)))
    assert late.id in {j.id for j in started}
    await finish(store, started[:2])
    await finish(store, started[2:], OutcomeKind.FAILED)
    await store.insert_jobs(
        [
            new_job(
                tenant_id="t2",
                use_case="sms",
                run_at=now - timedelta(seconds=30),
                delay_tolerance_seconds=1,
            )
        ]
    )

    stats = await store.stats()
    counts = {(c.use_case, c.tenant_id, c.status): c.count for c in stats.counts}
    assert counts == {
        ("mail", "t1", "succeeded"): 2,
        ("mail", "t1", "failed"): 1,
        ("mail", "t1", "pending"): 1,
        ("sms", "t2", "pending"): 4,
    }
    assert [(c.use_case, c.tenant_id, c.status) for c in stats.counts] == sorted(counts)
    assert stats.finished_last_minute == {"succeeded": 2, "failed": 1, "cancelled": 0}
    assert stats.finished_last_hour == {"succeeded": 2, "failed": 1, "cancelled": 0}
    assert stats.run_seconds["p50"] is not None and stats.run_seconds["p50"] >= 0
    wait = stats.queue_wait_seconds
    assert wait["p50"] is not None and wait["p99"] is not None
    assert 0 <= wait["p50"] <= wait["p99"] and wait["p99"] >= 9  # the late job waited 10 s
    assert stats.deadline_misses_last_hour == 1
    assert stats.overdue_pending == 1
    assert stats.oldest_due_age_seconds is not None and stats.oldest_due_age_seconds >= 29

    mine = await store.stats("t1")
    assert {c.tenant_id for c in mine.counts} == {"t1"}
    assert mine.finished_last_hour == {"succeeded": 2, "failed": 1, "cancelled": 0}
    assert (mine.overdue_pending, mine.deadline_misses_last_hour) == (0, 1)
    assert mine.oldest_due_age_seconds is not None and mine.oldest_due_age_seconds < 29
    assert (await store.stats("nobody")).counts == []


# -- exact time, on a memory store with a clock of the test's --------------------------------


class Clock:
    def __init__(self) -> None:
        self.now = datetime(2030, 1, 1, tzinfo=UTC)

    def __call__(self) -> datetime:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += timedelta(seconds=seconds)


@pytest.fixture
async def clocked() -> tuple[MemoryStore, Clock]:
    clock = Clock()
    store = MemoryStore(clock=clock)
    await store.open()
    return store, clock


async def test_the_bucket_refills_at_its_rate_up_to_one_second_of_starts(
    clocked: tuple[MemoryStore, Clock],
) -> None:
    store, clock = clocked
    limits = quotas("t1", "mail", max_per_second=4)  # (steps of exact binary fractions)
    await insert(store, 20, tenant_id="t1", use_case="mail")
    assert len(await store.claim_jobs(claim(10, limits))) == 4  # a new bucket is full
    assert await store.claim_jobs(claim(10, limits)) == []
    clock.advance(0.125)
    assert await store.claim_jobs(claim(10, limits)) == []  # 0.5 tokens
    clock.advance(0.125)
    assert len(await store.claim_jobs(claim(10, limits))) == 1  # 1.0
    clock.advance(0.625)
    assert len(await store.claim_jobs(claim(10, limits))) == 2  # 2.5: 0.5 kept
    clock.advance(0.125)
    assert len(await store.claim_jobs(claim(10, limits))) == 1  # 0.5 + 0.5
    clock.advance(60)
    assert len(await store.claim_jobs(claim(10, limits))) == 4  # the burst, no more
    # max_running and the bucket together: the lower bound wins (12 run already).
    both = Limits(
        default_max_concurrent=1000,
        quotas={"t1": {"mail": TenantQuota(max_running=13, max_per_second=4)}},
    )
    clock.advance(60)
    assert len(await store.claim_jobs(claim(10, both))) == 1


async def test_a_claim_limit_below_the_allowance_spends_only_what_it_took(
    clocked: tuple[MemoryStore, Clock],
) -> None:
    store, _ = clocked
    limits = quotas("t1", "mail", max_per_second=5)
    await insert(store, 20, tenant_id="t1", use_case="mail")
    assert len(await store.claim_jobs(claim(2, limits))) == 2
    assert len(await store.claim_jobs(claim(10, limits))) == 3


async def test_expiry_and_retention_follow_the_clock(clocked: tuple[MemoryStore, Clock]) -> None:
    store, clock = clocked
    (job,) = await insert(store, 1, expires_at=clock.now + timedelta(seconds=10))
    clock.advance(10)
    assert await store.expire_jobs(10) == []  # expires_at < now, strictly
    clock.advance(0.001)
    (gone,) = await store.expire_jobs(10)
    assert (gone.id, gone.finished_at) == (job.id, clock.now)

    clock.advance(100)
    assert await store.delete_finished("cancelled", 100, 10) == 0
    clock.advance(0.001)
    assert await store.delete_finished("cancelled", 100, 10) == 1


async def test_a_lease_lapses_exactly_at_its_end(clocked: tuple[MemoryStore, Clock]) -> None:
    store, clock = clocked
    assert await store.try_lead("scheduler", "a", 5)
    clock.advance(5)
    assert not await store.try_lead("scheduler", "b", 5)
    clock.advance(0.001)
    assert await store.try_lead("scheduler", "b", 5)
    clock.advance(4)
    assert await store.try_lead("scheduler", "b", 5)  # renewed: 5 s from now
    clock.advance(4)
    assert not await store.try_lead("scheduler", "a", 5)


async def test_stats_windows_end_now(clocked: tuple[MemoryStore, Clock]) -> None:
    store, clock = clocked
    await insert(store, 3, tenant_id="t1", use_case="mail", delay_tolerance_seconds=5)
    clock.advance(2)
    started = await store.claim_jobs(claim(3))  # each waited 2 s
    clock.advance(4)
    await finish(store, started[:1])  # ran 4 s, finished 2 h before the stats
    clock.advance(3600 * 2 - 120)
    await finish(store, started[1:2], OutcomeKind.FAILED)  # ran ~2 h, 2 min before
    clock.advance(90)
    await finish(store, started[2:], OutcomeKind.CANCELLED)  # ~2 h, 30 s before
    await insert(store, 1, tenant_id="t1", use_case="mail")
    clock.advance(30)

    stats = await store.stats()
    assert stats.generated_at == clock.now
    assert stats.finished_last_minute == {"succeeded": 0, "failed": 0, "cancelled": 1}
    assert stats.finished_last_hour == {"succeeded": 0, "failed": 1, "cancelled": 1}
    run = 2 * 3600 - 120 + 4
    expected = {"p50": run + 45, "p95": run + 85.5, "p99": run + 89.1}
    assert stats.run_seconds == pytest.approx(expected)
    # Every job started two hours ago: nothing started in the last hour.
    assert stats.queue_wait_seconds == {"p50": None, "p95": None, "p99": None}
    assert stats.oldest_due_age_seconds == 30


async def test_queue_wait_and_deadline_misses(clocked: tuple[MemoryStore, Clock]) -> None:
    store, clock = clocked
    await insert(store, 1, delay_tolerance_seconds=5)
    await insert(store, 1, delay_tolerance_seconds=60)
    clock.advance(10)
    await store.claim_jobs(claim(2))
    await insert(store, 1, delay_tolerance_seconds=1)
    clock.advance(4)
    stats = await store.stats()
    assert stats.queue_wait_seconds == {"p50": 10.0, "p95": 10.0, "p99": 10.0}
    assert stats.deadline_misses_last_hour == 1  # started 10 s after a 5 s tolerance
    assert stats.overdue_pending == 1
    assert stats.oldest_due_age_seconds == 4


# -- the registry of live processes ----------------------------------------------------------


async def test_a_registered_process_is_listed_renewed_and_removed(store: JobStore) -> None:
    info = ProcessInfo("w-1", ProcessKind.WORKER, "host-a", 4242, "0.1.0", 8, ("mail", "sms"))
    await store.register_process(info, ttl_seconds=30)
    await store.register_process(
        ProcessInfo("s-1", ProcessKind.SCHEDULER, "host-b", 7, "0.1.0"), ttl_seconds=30
    )
    [scheduler, worker] = await store.list_processes()
    assert worker.info == info and worker.jobs_held == 0
    assert scheduler.info.kind is ProcessKind.SCHEDULER
    assert worker.expires_at > worker.heartbeat_at >= worker.started_at
    assert await store.beat_process("w-1", 5, ttl_seconds=30)
    [_, renewed] = await store.list_processes()
    assert renewed.jobs_held == 5 and renewed.heartbeat_at >= worker.heartbeat_at
    assert renewed.started_at == worker.started_at
    await store.remove_process("w-1")
    assert [p.info.id for p in await store.list_processes()] == ["s-1"]
    assert not await store.beat_process("w-1", 1, ttl_seconds=30)


async def test_a_stale_process_lapses_and_the_next_registration_deletes_it(
    store: JobStore,
) -> None:
    await store.register_process(
        ProcessInfo("dead", ProcessKind.WORKER, "h", 1, "0.1.0"), ttl_seconds=0.2
    )

    async def lapsed() -> bool:
        return not await store.list_processes()

    assert await wait_until(lapsed, timeout=5)
    await store.register_process(ProcessInfo("new", ProcessKind.WORKER, "h", 2, "v"), 30)
    assert not await store.beat_process("dead", 0, ttl_seconds=30)  # deleted, not revived


async def test_the_leader_is_read_back_until_it_resigns(store: JobStore) -> None:
    assert await store.try_lead("scheduler", "worker/w1", 30)
    lead = await store.current_leader("scheduler")
    assert lead is not None and (lead.process_role, lead.process_id) == ("worker", "w1")
    assert lead.expires_at > lead.since
    await store.resign("scheduler", "worker/w1")
    assert await store.current_leader("scheduler") is None


# -- what the dashboard reads ------------------------------------------------------------------


async def test_counts_stop_at_their_cap_and_follow_the_filters(store: JobStore) -> None:
    await insert(store, 5, use_case="mail", tenant_id="t1")
    await insert(store, 2, use_case="sms", tenant_id="t2")
    assert await store.count_jobs(JobFilter(), cap=100) == 7
    assert await store.count_jobs(JobFilter(), cap=3) == 3
    assert await store.count_jobs(JobFilter(use_case="mail"), cap=100) == 5
    assert await store.count_jobs(JobFilter(tenant_id="t2"), cap=100) == 2
    assert await store.count_jobs(JobFilter(status=JobState.RUNNING), cap=100) == 0


async def test_periodic_jobs_are_paused_and_resumed_by_name(store: JobStore) -> None:
    assert await store.paused_periodic() == set()
    await store.set_periodic_paused("a", True)
    await store.set_periodic_paused("a", True)  # twice: still once
    await store.set_periodic_paused("b", True)
    await store.set_periodic_paused("b", False)
    assert await store.paused_periodic() == {"a"}


async def test_active_counts_per_use_case_stop_at_their_cap(store: JobStore) -> None:
    await insert(store, 4, use_case="mail", tenant_id="t1")
    await insert(store, 1, use_case="sms", tenant_id="t2")
    await store.claim_jobs(claim(1, use_cases=("mail",)))
    await store.set_paused("idle", True)
    counts = {c.use_case: c for c in await store.active_counts(None, cap=2)}
    assert set(counts) == {"idle", "mail", "sms"}
    mail = counts["mail"]
    assert (mail.pending, mail.queued, mail.running, mail.paused) == (2, 0, 1, False)
    assert counts["idle"].paused and counts["sms"].pending == 1
    mine = {c.use_case: c for c in await store.active_counts("t2", cap=100)}
    assert mine["sms"].pending == 1 and mine["mail"].pending == 0


async def test_job_gauges_count_each_state_to_its_cap_and_age_the_oldest_due_job(
    store: JobStore,
) -> None:
    due = datetime.now(UTC) - timedelta(seconds=60)
    await insert(store, 4, use_case="mail", run_at=due)
    await insert(store, 1, use_case="sms", delay=3600)
    await store.claim_jobs(claim(1, use_cases=("mail",)))
    gauges = await store.job_gauges(cap=2)
    assert gauges.counts == {("pending", "mail"): 2, ("running", "mail"): 1, ("pending", "sms"): 1}
    assert 59 <= gauges.oldest_due_seconds["mail"] < 600
    assert gauges.oldest_due_seconds["sms"] == 0.0  # nothing due yet
