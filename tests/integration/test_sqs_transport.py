"""The sqs transport against a real local SQS server (moto's server mode) and PostgreSQL:
scheduler dispatch, worker receive and claim, and the faults a broker brings (duplicate,
malformed, lost and late messages, expired receipts, a misconfigured dead-letter queue)."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest

from async_jobs import Backoff, JobApp, JobContext, JobState, WorkerConfig
from async_jobs.core.scheduler import SchedulerConfig
from async_jobs.core.settings import Settings
from async_jobs.core.worker import Worker
from async_jobs.domain.dispatch import DispatchTicket
from async_jobs.domain.errors import ConfigurationError
from async_jobs.domain.jobs import ClaimRequest, JobFilter, JobId
from async_jobs.transports import registry
from async_jobs.transports.sqs import SqsClient, SqsTransport, create_queues
from tests.helpers import SqsServer, wait_until

pytestmark = pytest.mark.postgres

NO_WAIT = Backoff.constant(0, jitter=0)


def sqs_settings(dsn: str, server: SqsServer, **kw: Any) -> Settings:
    queue = server.queue_url(f"jobs-{uuid.uuid4().hex[:8]}")
    kw.setdefault("sqs_dispatch_timeout_seconds", 10.0)
    kw.setdefault("sqs_long_poll_seconds", 1)  # a stopping worker waits for its polls
    return Settings(
        db_dsn=dsn,
        transport="sqs",
        sqs_endpoint_url=server.endpoint,
        sqs_queues={"default": queue},
        lease_seconds=10.0,
        poll_interval_seconds=0.05,
        **kw,
    )


@pytest.fixture
async def app(pg_database: str, sqs_server: SqsServer) -> AsyncIterator[JobApp]:
    jobs = JobApp(settings=sqs_settings(pg_database, sqs_server))
    async with jobs:
        await create_queues(jobs.sqs_config(), 3)
        yield jobs


@pytest.fixture
async def client(app: JobApp) -> AsyncIterator[SqsClient]:
    sqs = SqsClient(app.sqs_config())
    await sqs.open()
    yield sqs
    await sqs.close()


def queue_of(app: JobApp) -> str:
    return app.sqs_config().queues["default"]


def worker_config(app: JobApp, concurrency: int = 4, **kw: Any) -> WorkerConfig:
    return WorkerConfig(
        concurrency=concurrency,
        lease_seconds=app.settings.lease_seconds,
        poll_interval_seconds=0.05,
        limits=app.attempt_limits(),
        **kw,
    )


@contextlib.asynccontextmanager
async def running(
    app: JobApp, *, scheduler: bool = True, concurrency: int = 4
) -> AsyncIterator[Worker]:
    """A worker, and (unless told not to) a leading scheduler, until the block ends."""
    worker = app.worker(worker_config(app, concurrency))
    tasks = [asyncio.create_task(worker.run())]
    leader = None
    if scheduler:
        leader = app.scheduler(SchedulerConfig(interval_seconds=0.2, leader_lease_seconds=2.0))
        tasks.append(asyncio.create_task(leader.run()))
    try:
        yield worker
    finally:
        worker.stop()
        if leader is not None:
            leader.stop()
        await asyncio.gather(*tasks)


async def all_ended(app: JobApp, ids: list[Any]) -> bool:
    for job_id in ids:
        if not (await app.get_job(job_id)).status.is_terminal:
            return False
    return True


async def drained(client: SqsClient, url: str) -> bool:
    return await client.depth(url) == (0, 0)


async def test_jobs_go_through_sqs_once_each_and_the_queue_drains(
    app: JobApp, client: SqsClient
) -> None:
    ran: list[str] = []

    @app.job("greet")
    async def greet(ctx: JobContext, payload: dict[str, Any]) -> str:
        ran.append(payload["name"])
        return f"hello {payload['name']}"

    @app.job("blocking")
    def blocking(ctx: JobContext, payload: dict[str, Any]) -> int:
        return int(payload["n"]) * 2

    jobs = [await app.enqueue("greet", {"name": f"n{i}"}) for i in range(25)]
    jobs += [await app.enqueue("blocking", {"n": i}) for i in range(5)]
    async with running(app):
        await wait_until(lambda: all_ended(app, [j.id for j in jobs]), timeout=40)
        await wait_until(lambda: drained(client, queue_of(app)), timeout=20)
    for job in jobs:
        done = await app.get_job(job.id)
        assert (done.status, done.attempts) == (JobState.SUCCEEDED, 1)
    assert sorted(ran) == sorted(f"n{i}" for i in range(25))
    assert (await app.get_job(jobs[-1].id)).result == 8


async def test_each_retry_is_dispatched_anew_until_attempts_are_spent(
    app: JobApp, client: SqsClient
) -> None:
    calls: list[int] = []

    @app.job("flaky", max_attempts=3, backoff=NO_WAIT)
    async def flaky(ctx: JobContext, payload: dict[str, Any]) -> None:
        calls.append(ctx.attempt)
        raise ValueError(f"attempt {ctx.attempt}")

    job = await app.enqueue("flaky")
    async with running(app):
        await wait_until(lambda: all_ended(app, [job.id]), timeout=30)
        await wait_until(lambda: drained(client, queue_of(app)), timeout=20)
    failed = await app.get_job(job.id)
    assert (failed.status, failed.attempts, calls) == (JobState.FAILED, 3, [1, 2, 3])


async def test_a_running_job_can_be_cancelled(app: JobApp, client: SqsClient) -> None:
    started = asyncio.Event()

    @app.job("forever")
    async def forever(ctx: JobContext, payload: dict[str, Any]) -> None:
        started.set()
        await asyncio.Event().wait()

    job = await app.enqueue("forever")
    async with running(app):
        await asyncio.wait_for(started.wait(), 20)
        await app.cancel(job.id)
        await wait_until(lambda: all_ended(app, [job.id]), timeout=20)
        await wait_until(lambda: drained(client, queue_of(app)), timeout=20)
    assert (await app.get_job(job.id)).status is JobState.CANCELLED


async def test_a_message_delivered_twice_runs_its_job_once(app: JobApp, client: SqsClient) -> None:
    calls: list[int] = []

    @app.job("once")
    async def once(ctx: JobContext, payload: dict[str, Any]) -> None:
        calls.append(ctx.attempt)

    job = await app.enqueue("once")
    (queued,) = await app.store.claim_jobs(
        ClaimRequest("test", 10, 60.0, limits=app.limits, dispatch=True)
    )
    body = DispatchTicket.of(queued).to_message()
    assert await client.send(queue_of(app), [body, body, body]) == []
    async with running(app, scheduler=False) as worker:
        await wait_until(lambda: all_ended(app, [job.id]), timeout=20)
        await wait_until(lambda: drained(client, queue_of(app)), timeout=20)
        transport = worker_transport(worker)
        await wait_until(lambda: transport.counts["stale"] == 2)
    assert calls == [1]
    assert (await app.get_job(job.id)).status is JobState.SUCCEEDED


async def test_malformed_and_foreign_messages_are_deleted_and_counted(
    app: JobApp, client: SqsClient
) -> None:
    @app.job("echo")
    async def echo(ctx: JobContext, payload: dict[str, Any]) -> dict[str, Any]:
        return payload

    real = await app.enqueue("echo", {"ok": True})
    (queued,) = await app.store.claim_jobs(
        ClaimRequest("test", 10, 60.0, limits=app.limits, dispatch=True)
    )
    ticket = DispatchTicket.of(queued)
    junk = [
        "not json at all",
        "[1, 2, 3]",
        json.dumps({"v": 1, "job_id": "nope", "attempt": 1, "dispatch_id": "x"}),
        json.dumps({"v": 1, "job_id": str(ticket.job_id), "attempt": 1}),
        "x" * 5000,  # oversized
    ]
    foreign = [
        dataclasses.replace(ticket, job_id=JobId(uuid.uuid4())).to_message(),
        dataclasses.replace(ticket, attempt=7).to_message(),  # disagrees with the row
        dataclasses.replace(ticket, dispatch_id=uuid.uuid4()).to_message(),
    ]
    url = queue_of(app)
    assert await client.send(url, junk) == []
    assert await client.send(url, foreign) == []
    async with running(app, scheduler=False) as worker:
        transport = worker_transport(worker)
        await wait_until(lambda: transport.counts["malformed"] == 5, timeout=20)
        await wait_until(lambda: transport.counts["stale"] == 3, timeout=20)
        await client.send(url, [ticket.to_message()])  # the worker goes on
        await wait_until(lambda: all_ended(app, [real.id]), timeout=20)
        await wait_until(lambda: drained(client, url), timeout=20)
    assert (await app.get_job(real.id)).status is JobState.SUCCEEDED


async def test_a_lost_send_is_sent_again_after_the_dispatch_lapses(
    pg_database: str, sqs_server: SqsServer
) -> None:
    jobs = JobApp(settings=sqs_settings(pg_database, sqs_server, sqs_dispatch_timeout_seconds=1))

    @jobs.job("echo")
    async def echo(ctx: JobContext, payload: dict[str, Any]) -> int:
        return 1

    async with jobs:
        await create_queues(jobs.sqs_config(), 3)
        job = await jobs.enqueue("echo")
        # Dispatched, but its message never sent (a scheduler that died right after the mark).
        (queued,) = await jobs.store.claim_jobs(
            ClaimRequest("test", 10, 1.0, limits=jobs.limits, dispatch=True)
        )
        async with running(jobs):
            await wait_until(lambda: all_ended(jobs, [job.id]), timeout=30)
        done = await jobs.get_job(job.id)
        assert (done.status, done.attempts) == (JobState.SUCCEEDED, 1)
        assert queued.dispatch_id is not None


async def test_stopping_releases_received_but_unclaimed_messages_at_once(
    app: JobApp, client: SqsClient
) -> None:
    await app.enqueue_many([app_request() for _ in range(3)])
    queued = await app.store.claim_jobs(
        ClaimRequest("test", 10, 60.0, limits=app.limits, dispatch=True)
    )
    url = queue_of(app)
    await client.send(url, [DispatchTicket.of(j).to_message() for j in queued])
    transport = SqsTransport(app.store, app.sqs_config(), "w1", 10.0, (), 3)
    await transport.start()
    try:
        assert await transport.receive(3, 0) == []  # asks for 3; none has arrived yet
        await wait_until(lambda: transport.counts["received"] == 3, timeout=20)
    finally:
        await transport.stop()
    assert transport.counts["released"] == 3
    assert await client.depth(url) == (3, 0)  # visible again, not after a timeout
    for job in queued:
        assert (await app.get_job(job.id)).status is JobState.QUEUED  # nothing started


async def test_a_stopping_worker_lets_its_poll_end_so_that_no_message_is_hidden(
    app: JobApp, client: SqsClient
) -> None:
    """A poll cut short on the client's side can still take a message on the server's,
    which nobody then sees for the visibility timeout. Stopping lets it end instead, and
    releases what it brought."""
    await app.enqueue_many([app_request()])
    (job,) = await app.store.claim_jobs(
        ClaimRequest("test", 1, 60.0, limits=app.limits, dispatch=True)
    )
    config = dataclasses.replace(app.sqs_config(), long_poll_seconds=3)
    transport = SqsTransport(app.store, config, "w1", 10.0, (), 3)
    await transport.start()
    try:
        assert await transport.receive(1, 0) == []  # a slot free: a poll for 1 goes out
        await wait_until(lambda: transport.asking == 1, timeout=10)
        transport.wake()  # the worker begins to stop
        stopping = asyncio.ensure_future(transport.stop())
        await wait_until(lambda: transport.stopping, timeout=10)
        url = queue_of(app)
        await client.send(url, [DispatchTicket.of(job).to_message()])
        await stopping
    finally:
        await transport.stop()
    assert transport.counts["released"] == 1
    assert await client.depth(url) == (1, 0)
    assert (await app.get_job(job.id)).status is JobState.QUEUED


async def test_an_expired_receipt_handle_is_tolerated(app: JobApp, client: SqsClient) -> None:
    url = queue_of(app)
    await client.send(url, ["probe"])
    (message,) = await client.receive(url, 1, 5)
    assert await client.delete(url, [message["ReceiptHandle"]]) == []
    failed = await client.set_visibility(url, ["not-a-receipt-handle"], 30)
    assert [code for _, code in failed] == ["ReceiptHandleIsInvalid"]


async def test_a_dead_letter_queue_that_would_cut_attempts_short_refuses_start(
    app: JobApp, client: SqsClient
) -> None:
    @app.job("patient", max_attempts=5)
    async def patient(ctx: JobContext, payload: dict[str, Any]) -> None:
        return None

    url = queue_of(app)
    dlq = await client.client.get_queue_attributes(
        QueueUrl=url.replace("jobs-", "jobs-") + "-dlq", AttributeNames=["QueueArn"]
    )
    policy = {"deadLetterTargetArn": dlq["Attributes"]["QueueArn"], "maxReceiveCount": "3"}
    await client.client.set_queue_attributes(
        QueueUrl=url, Attributes={"RedrivePolicy": json.dumps(policy)}
    )
    worker = app.worker(worker_config(app))
    with pytest.raises(ConfigurationError, match="maxReceiveCount to at least 6"):
        await worker.run()


def app_request() -> Any:
    from async_jobs.app import EnqueueRequest

    return EnqueueRequest("noop")


def worker_transport(worker: Worker) -> SqsTransport:
    transport = worker._transport
    assert isinstance(transport, SqsTransport)
    return transport


async def drain_through_the_window(
    app: JobApp, in_broker: Callable[[], Awaitable[int]], backlog: int = 500
) -> Worker:
    """A backlog of due jobs on a broker transport whose dispatch window
    (``app.settings.dispatch_window``) is far smaller: the dispatcher queues and sends only
    the window; then, as workers claim, it sends more, the queued jobs never above the
    window, until every job has run once. ``in_broker``: the messages the broker holds.
    Returns the worker."""
    window = app.settings.dispatch_window
    assert window < backlog

    @app.job("noop")
    async def noop(ctx: JobContext, payload: dict[str, Any]) -> None:
        return None

    await app.enqueue_many([app_request() for _ in range(backlog)])
    dispatcher = registry.dispatcher(
        registry.SchedulerSide(app.store, app.settings, app.limits, "test")
    )
    assert dispatcher is not None
    try:
        assert await dispatcher.run_once() == window
        assert await dispatcher.run_once() == 0  # the window is full: nothing more is sent
    finally:
        await dispatcher.close()
    assert await app.store.count_queued(["default"], backlog) == {"default": window}
    assert await in_broker() == window
    pending = await app.store.count_jobs(JobFilter(status=JobState.PENDING), backlog)
    assert pending == backlog - window

    most = 0

    async def watch() -> None:
        nonlocal most
        while True:
            queued = await app.store.count_queued(["default"], backlog)
            most = max(most, queued["default"])
            await asyncio.sleep(0.01)  # wait-ok: sampling the queued count while jobs drain

    async def all_succeeded() -> bool:
        done = await app.store.count_jobs(JobFilter(status=JobState.SUCCEEDED), backlog)
        return done == backlog

    watcher = asyncio.create_task(watch())
    try:
        async with running(app, concurrency=20) as worker:
            await wait_until(all_succeeded, timeout=120)
    finally:
        watcher.cancel()
        await asyncio.gather(watcher, return_exceptions=True)
    assert 0 < most <= window
    return worker


@pytest.mark.cpu_heavy
async def test_a_backlog_is_sent_through_the_dispatch_window(
    pg_database: str, sqs_server: SqsServer
) -> None:
    # About 10 s: 500 jobs through moto's server, 10 messages per receive, one poll at a
    # time; fewer jobs would not show the window refilling many times over.
    jobs = JobApp(settings=sqs_settings(pg_database, sqs_server, dispatch_window=50))
    async with jobs:
        await create_queues(jobs.sqs_config(), 3)
        sqs = SqsClient(jobs.sqs_config())
        await sqs.open()
        try:

            async def in_queue() -> int:
                return sum(await sqs.depth(queue_of(jobs)))

            worker = await drain_through_the_window(jobs, in_queue)
            await wait_until(lambda: drained(sqs, queue_of(jobs)), timeout=20)
        finally:
            await sqs.close()
    transport = worker_transport(worker)
    assert transport.counts["claimed"] == 500 and transport.counts["stale"] == 0
