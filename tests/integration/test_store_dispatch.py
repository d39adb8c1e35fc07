"""Dispatch for broker transports, on every store: pending -> queued under a ticket, queued
-> running only by that ticket, lapsed and failed dispatches back to pending."""

from __future__ import annotations

import asyncio
import dataclasses
import uuid
from datetime import UTC, datetime, timedelta

from async_jobs.domain.dispatch import DispatchTicket
from async_jobs.domain.jobs import ClaimRequest, JobId, JobState, LeaseToken
from async_jobs.domain.scheduling import Limits
from async_jobs.ports import JobStore
from tests.helpers import age_leases, new_job, wait_until

UNCAPPED = Limits(default_max_concurrent=1_000_000)


def dispatch(limit: int = 10, seconds: float = 60.0, **kw: object) -> ClaimRequest:
    kw.setdefault("limits", UNCAPPED)
    return ClaimRequest(
        worker_id="scheduler",
        limit=limit,
        lease_seconds=seconds,
        dispatch=True,
        **kw,  # type: ignore[arg-type]
    )


async def test_dispatch_queues_due_jobs_under_a_ticket_without_spending_an_attempt(
    store: JobStore,
) -> None:
    await store.insert_jobs([new_job(priority="low"), new_job(priority="high")])
    await store.insert_job(new_job(delay=3600))  # not due
    jobs = await store.claim_jobs(dispatch())
    assert [j.priority.value for j in jobs] == ["high", "low"]
    for job in jobs:
        assert job.status is JobState.QUEUED
        assert job.attempts == 0
        assert job.lease_token is None and job.worker_id is None
        assert job.dispatch_id is not None and job.dispatch_expires_at is not None
        assert job.dispatch_expires_at > datetime.now(UTC) + timedelta(seconds=30)
        assert DispatchTicket.of(job).attempt == 1
        stored = await store.get_job(job.id)
        assert stored is not None and stored.status is JobState.QUEUED
        assert stored.dispatch_id == job.dispatch_id
    assert await store.claim_jobs(dispatch()) == []  # queued jobs are not dispatched twice


async def test_dispatch_jobs_gives_the_tickets_of_the_same_claim_in_its_order(
    store: JobStore,
) -> None:
    """``dispatch_jobs`` is the dispatch claim without reading the rows back: the jobs are
    queued as by ``claim_jobs(dispatch)``, within the limits, and only their tickets return,
    in the claim's order (priority, deadline, due time)."""
    low, high = new_job(priority="low"), new_job(priority="high")
    await store.insert_jobs([low, high, new_job(priority="medium", use_case="mail")])
    await store.insert_job(new_job(delay=3600))  # not due
    tickets = await store.dispatch_jobs(dispatch(use_cases=("default",)))
    assert [t.attempt for t in tickets] == [1, 1]
    jobs = [await store.get_job(t.job_id) for t in tickets]
    assert [j.priority.value for j in jobs if j is not None] == ["high", "low"]
    for ticket, job in zip(tickets, jobs, strict=True):
        assert job is not None and job.status is JobState.QUEUED and job.attempts == 0
        assert DispatchTicket.of(job) == ticket
    assert await store.dispatch_jobs(dispatch(use_cases=("default",))) == []
    capped = Limits(default_max_concurrent=0)
    assert await store.dispatch_jobs(dispatch(limits=capped)) == []  # the mail job: no slot
    (running,) = await store.claim_dispatched(tickets[:1], "w1", 30)
    assert (running.id, running.attempts) == (tickets[0].job_id, 1)


async def test_only_the_ticket_of_the_current_dispatch_claims_the_job(store: JobStore) -> None:
    await store.insert_job(new_job())
    (queued,) = await store.claim_jobs(dispatch())
    ticket = DispatchTicket.of(queued)
    forged = [
        dataclasses.replace(ticket, dispatch_id=uuid.uuid4()),
        dataclasses.replace(ticket, attempt=2),
        dataclasses.replace(ticket, job_id=JobId(uuid.uuid4())),
    ]
    assert await store.claim_dispatched(forged, "w1", 30) == []

    (running,) = await store.claim_dispatched([ticket], "w1", 30)
    assert running.id == queued.id
    assert running.status is JobState.RUNNING
    assert running.attempts == 1
    assert running.worker_id == "w1" and running.lease_token is not None
    assert running.dispatch_id is None
    # The same message delivered twice, or to another worker: nothing happens.
    assert await store.claim_dispatched([ticket], "w2", 30) == []
    states = await store.extend_leases(
        [(running.id, 1, LeaseToken(running.lease_token))], lease_seconds=30
    )
    assert [s.job_id for s in states] == [running.id]


async def test_dispatched_jobs_hold_their_use_case_slots(store: JobStore) -> None:
    limits = Limits(default_max_concurrent=2)
    await store.insert_jobs([new_job(use_case="mail") for _ in range(5)])
    queued = await store.claim_jobs(dispatch(10, limits=limits))
    assert len(queued) == 2
    direct = ClaimRequest(worker_id="w1", limit=10, lease_seconds=30, limits=limits)
    assert await store.claim_jobs(direct) == []
    assert await store.claim_jobs(dispatch(10, limits=limits)) == []
    # Claimed by a worker they still hold the slots; the other three wait.
    await store.claim_dispatched([DispatchTicket.of(j) for j in queued], "w1", 30)
    assert await store.claim_jobs(dispatch(10, limits=limits)) == []


async def test_a_lapsed_dispatch_goes_back_to_pending_and_its_old_ticket_is_void(
    store: JobStore,
) -> None:
    await store.insert_job(new_job())
    (queued,) = await store.claim_jobs(dispatch(seconds=0.05))
    old = DispatchTicket.of(queued)
    assert await store.requeue_dispatched(10, ()) in ([], [queued.id])  # maybe not yet lapsed
    await wait_until(lambda: _status_is(store, queued.id, JobState.PENDING, requeue=True))
    stored = await store.get_job(queued.id)
    assert stored is not None and stored.attempts == 0 and stored.dispatch_id is None

    (again,) = await store.claim_jobs(dispatch())
    assert again.dispatch_id not in (None, old.dispatch_id)
    assert await store.claim_dispatched([old], "w1", 30) == []
    (running,) = await store.claim_dispatched([DispatchTicket.of(again)], "w1", 30)
    assert running.attempts == 1


async def test_requeue_of_named_dispatches_is_guarded(store: JobStore) -> None:
    await store.insert_jobs([new_job() for _ in range(3)])
    a, b, c = await store.claim_jobs(dispatch())
    await store.claim_dispatched([DispatchTicket.of(b)], "w1", 30)  # b runs now
    stale_c = dataclasses.replace(DispatchTicket.of(c), dispatch_id=uuid.uuid4())
    back = await store.requeue_dispatched(0, [DispatchTicket.of(a), DispatchTicket.of(b), stale_c])
    assert back == [a.id]
    states = {j: (await store.get_job(j)) for j in (a.id, b.id, c.id)}
    assert states[a.id] is not None and states[a.id].status is JobState.PENDING  # type: ignore[union-attr]
    assert states[b.id] is not None and states[b.id].status is JobState.RUNNING  # type: ignore[union-attr]
    assert states[c.id] is not None and states[c.id].status is JobState.QUEUED  # type: ignore[union-attr]
    assert await store.requeue_dispatched(10) == []  # nothing has lapsed


async def test_a_cancelled_or_expired_queued_job_is_not_started_by_its_ticket(
    store: JobStore,
) -> None:
    later = datetime.now(UTC) + timedelta(hours=1)
    doomed, _ = await store.insert_job(new_job())
    short, _ = await store.insert_job(dataclasses.replace(new_job(), expires_at=later))
    queued = {j.id: j for j in await store.claim_jobs(dispatch())}
    assert set(queued) == {doomed.id, short.id}
    result = await store.cancel_job(doomed.id)
    assert result is not None and result[0].status is JobState.CANCELLED
    await age_leases(store, [short.id], seconds=2 * 3600, column="expires_at")  # now expired
    tickets = [DispatchTicket.of(j) for j in queued.values()]
    assert await store.claim_dispatched(tickets, "w1", 30) == []


async def test_two_workers_racing_on_one_ticket_start_the_job_once(store: JobStore) -> None:
    await store.insert_jobs([new_job() for _ in range(20)])
    tickets = [DispatchTicket.of(j) for j in await store.claim_jobs(dispatch(20))]
    first, second = await asyncio.gather(
        store.claim_dispatched(tickets, "w1", 30), store.claim_dispatched(tickets, "w2", 30)
    )
    assert len(first) + len(second) == 20
    assert not {j.id for j in first} & {j.id for j in second}


async def _status_is(store: JobStore, job_id: JobId, state: JobState, *, requeue: bool) -> bool:
    if requeue:
        await store.requeue_dispatched(10)
    job = await store.get_job(job_id)
    return job is not None and job.status is state


async def test_queued_jobs_are_counted_per_use_case_up_to_the_cap(store: JobStore) -> None:
    await store.insert_jobs([new_job(use_case="mail") for _ in range(5)])
    await store.insert_jobs([new_job(use_case="sms") for _ in range(2)])
    await store.insert_jobs([new_job(use_case="push") for _ in range(3)])
    assert await store.count_queued(["mail", "sms", "none"], 10) == {"mail": 0, "sms": 0, "none": 0}
    queued = await store.claim_jobs(dispatch(10, use_cases=("mail", "sms")))
    assert len(queued) == 7
    # Running and pending jobs are not counted; a use case not asked for is not answered.
    mail = next(j for j in queued if j.use_case == "mail")
    await store.claim_dispatched([DispatchTicket.of(mail)], "w1", 30)
    assert await store.count_queued(["mail", "sms", "none"], 10) == {"mail": 4, "sms": 2, "none": 0}
    assert await store.count_queued(["mail", "sms"], 3) == {"mail": 3, "sms": 2}
    assert await store.count_queued([], 10) == {}
    # Back to pending (a lapsed or failed send): no longer queued.
    sms = [DispatchTicket.of(j) for j in queued if j.use_case == "sms"]
    await store.requeue_dispatched(0, sms)
    assert await store.count_queued(["sms"], 10) == {"sms": 0}
