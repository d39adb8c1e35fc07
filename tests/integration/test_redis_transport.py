"""The redis transport against the local Redis (keys under a prefix of each test's own) and
PostgreSQL: scheduler dispatch, worker read and claim, and the faults a broker brings
(duplicate, malformed, lost and late entries, a consumer that died, the group gone)."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import os
import sys
import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest

from async_jobs import JobApp, JobContext, JobState
from async_jobs.app import EnqueueRequest
from async_jobs.core.settings import Settings
from async_jobs.core.worker import Worker
from async_jobs.domain.dispatch import DispatchTicket
from async_jobs.domain.errors import ConfigurationError
from async_jobs.domain.jobs import ClaimRequest, Job, JobId
from async_jobs.transports.redis import (
    FIELD,
    GROUP,
    RedisConfig,
    RedisDispatcher,
    RedisTransport,
    connect,
    ensure_group,
    info,
    require_redis,
)
from tests.helpers import wait_until
from tests.integration.test_sqs_transport import all_ended, drain_through_the_window, running

pytestmark = pytest.mark.postgres

REDIS_URL = os.environ.get("ASYNC_JOBS_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")


def redis_settings(dsn: str, url: str = REDIS_URL, **kw: Any) -> Settings:
    kw.setdefault("redis_dispatch_timeout_seconds", 10.0)
    kw.setdefault("lease_seconds", 10.0)
    return Settings(
        db_dsn=dsn,
        transport="redis",
        redis_url=url,
        redis_prefix=f"test-{uuid.uuid4().hex[:10]}",
        poll_interval_seconds=0.05,
        **kw,
    )


def config_of(app: JobApp) -> RedisConfig:
    return RedisConfig.from_settings(app.settings)


def stream_of(app: JobApp) -> str:
    return config_of(app).stream_of("default")


async def drained(app: JobApp) -> bool:
    """The stream holds no entry and nothing is pending in its group."""
    (row,) = await info(config_of(app))
    return row["length"] == 0 and row["pending"] == 0


@contextlib.asynccontextmanager
async def redis_client(app: JobApp) -> AsyncIterator[Any]:
    client = connect(config_of(app))
    try:
        yield client
    finally:
        await client.delete(stream_of(app))
        await client.aclose()


@pytest.fixture
async def app(pg_database: str) -> AsyncIterator[JobApp]:
    jobs = JobApp(settings=redis_settings(pg_database))
    async with jobs:
        yield jobs


@pytest.fixture
async def client(app: JobApp) -> AsyncIterator[Any]:
    async with redis_client(app) as redis:
        yield redis


async def dispatched(app: JobApp, limit: int = 10, lease: float = 60.0) -> list[Job]:
    """Jobs marked dispatched in the store, with no entry added (as a scheduler would)."""
    return await app.store.claim_jobs(
        ClaimRequest("test", limit, lease, limits=app.limits, dispatch=True)
    )


async def add(client: Any, stream: str, *bodies: str) -> None:
    for body in bodies:
        await client.xadd(stream, {FIELD: body})


async def in_the_stream(app: JobApp, client: Any, n: int) -> list[Job]:
    """n jobs enqueued, dispatched, and their entries added, as a leading scheduler does."""
    await app.enqueue_many([EnqueueRequest("noop") for _ in range(n)])
    queued = await dispatched(app)
    await add(client, stream_of(app), *(DispatchTicket.of(j).to_message() for j in queued))
    return queued


def worker_transport(worker: Worker) -> RedisTransport:
    transport = worker._transport
    assert isinstance(transport, RedisTransport)
    return transport


async def test_jobs_go_through_redis_once_each_and_the_stream_drains(app: JobApp) -> None:
    ran: list[int] = []

    @app.job("count")
    async def count(ctx: JobContext, payload: dict[str, Any]) -> int:
        ran.append(int(payload["n"]))
        return int(payload["n"])

    jobs = await app.enqueue_many([EnqueueRequest("count", {"n": n}) for n in range(40)])
    async with running(app, concurrency=8) as worker:
        await wait_until(lambda: all_ended(app, [j.id for j in jobs]), timeout=30)
        await wait_until(lambda: drained(app), timeout=10)
        transport = worker_transport(worker)
    assert sorted(ran) == list(range(40))
    assert transport.counts["claimed"] == 40 and transport.counts["acked"] == 40
    for job in jobs:
        done = await app.get_job(job.id)
        assert (done.status, done.attempts) == (JobState.SUCCEEDED, 1)


async def test_an_entry_delivered_twice_runs_its_job_once(app: JobApp, client: Any) -> None:
    calls: list[int] = []

    @app.job("once")
    async def once(ctx: JobContext, payload: dict[str, Any]) -> None:
        calls.append(ctx.attempt)

    job = await app.enqueue("once")
    (queued,) = await dispatched(app)
    body = DispatchTicket.of(queued).to_message()
    await add(client, stream_of(app), body, body, body)
    async with running(app, scheduler=False) as worker:
        transport = worker_transport(worker)
        await wait_until(lambda: all_ended(app, [job.id]), timeout=20)
        await wait_until(lambda: transport.counts["stale"] == 2, timeout=10)
        await wait_until(lambda: drained(app), timeout=10)
    assert calls == [1]
    assert (await app.get_job(job.id)).status is JobState.SUCCEEDED


async def test_malformed_and_foreign_entries_are_acknowledged_and_counted(
    app: JobApp, client: Any
) -> None:
    @app.job("echo")
    async def echo(ctx: JobContext, payload: dict[str, Any]) -> dict[str, Any]:
        return payload

    real = await app.enqueue("echo", {"ok": True})
    (queued,) = await dispatched(app)
    ticket = DispatchTicket.of(queued)
    stream = stream_of(app)
    await add(
        client,
        stream,
        "not json at all",
        "[1, 2, 3]",
        json.dumps({"v": 1, "job_id": "nope", "attempt": 1, "dispatch_id": "x"}),
        "x" * 5000,
    )
    await client.xadd(stream, {"other": "field"})  # no ticket field at all
    await add(
        client,
        stream,
        dataclasses.replace(ticket, job_id=JobId(uuid.uuid4())).to_message(),
        dataclasses.replace(ticket, attempt=7).to_message(),
        dataclasses.replace(ticket, dispatch_id=uuid.uuid4()).to_message(),
    )
    async with running(app, scheduler=False) as worker:
        transport = worker_transport(worker)
        await wait_until(lambda: transport.counts["malformed"] == 5, timeout=20)
        await wait_until(lambda: transport.counts["stale"] == 3, timeout=20)
        await add(client, stream, ticket.to_message())  # the worker goes on
        await wait_until(lambda: all_ended(app, [real.id]), timeout=20)
        await wait_until(lambda: drained(app), timeout=10)
    assert (await app.get_job(real.id)).status is JobState.SUCCEEDED


async def test_a_lost_entry_is_sent_again_after_the_dispatch_lapses(pg_database: str) -> None:
    jobs = JobApp(settings=redis_settings(pg_database, redis_dispatch_timeout_seconds=1))

    @jobs.job("echo")
    async def echo(ctx: JobContext, payload: dict[str, Any]) -> int:
        return 1

    async with jobs, redis_client(jobs):
        job = await jobs.enqueue("echo")
        (queued,) = await dispatched(jobs, lease=1.0)  # marked, its entry never added
        async with running(jobs):
            await wait_until(lambda: all_ended(jobs, [job.id]), timeout=30)
        done = await jobs.get_job(job.id)
        assert (done.status, done.attempts) == (JobState.SUCCEEDED, 1)
        assert queued.dispatch_id is not None


async def test_the_group_is_made_again_when_redis_lost_it(pg_database: str) -> None:
    """Redis emptied under a running worker (the stream and its group gone): the worker
    makes the group again, from the stream's start, and reads what was added since."""
    jobs = JobApp(settings=redis_settings(pg_database, redis_dispatch_timeout_seconds=1))

    @jobs.job("echo")
    async def echo(ctx: JobContext, payload: dict[str, Any]) -> int:
        return 1

    async with jobs, redis_client(jobs) as client:
        first = await jobs.enqueue("echo")
        async with running(jobs) as worker:
            transport = worker_transport(worker)
            await wait_until(lambda: all_ended(jobs, [first.id]), timeout=20)
            assert transport.counts["group_created"] == 1
            await client.delete(stream_of(jobs))  # the stream and its group are gone
            later = await jobs.enqueue("echo")
            await wait_until(lambda: all_ended(jobs, [later.id]), timeout=30)
            await wait_until(lambda: drained(jobs), timeout=10)
        assert transport.counts["group_created"] == 2
        for job in (first, later):
            done = await jobs.get_job(job.id)
            assert (done.status, done.attempts) == (JobState.SUCCEEDED, 1)


async def test_entries_of_a_consumer_that_died_are_taken_over(
    pg_database: str,
) -> None:
    jobs = JobApp(settings=redis_settings(pg_database, lease_seconds=1.0))

    @jobs.job("echo")
    async def echo(ctx: JobContext, payload: dict[str, Any]) -> int:
        return 1

    async with jobs, redis_client(jobs) as client:
        job = await jobs.enqueue("echo")
        (queued,) = await dispatched(jobs)
        stream = stream_of(jobs)
        await client.xgroup_create(stream, GROUP, id="0", mkstream=True)
        await add(client, stream, DispatchTicket.of(queued).to_message())
        # A consumer reads the entry and dies before claiming its job.
        read = await client.xreadgroup(GROUP, "dead-worker", {stream: ">"}, count=1)
        assert len(read[0][1]) == 1
        async with running(jobs, scheduler=False) as worker:
            transport = worker_transport(worker)
            await wait_until(lambda: all_ended(jobs, [job.id]), timeout=20)
            await wait_until(lambda: drained(jobs), timeout=10)
        assert transport.counts["autoclaimed"] == 1
        done = await jobs.get_job(job.id)
        assert (done.status, done.attempts) == (JobState.SUCCEEDED, 1)


async def test_stopping_hands_back_received_but_unclaimed_entries_at_once(
    app: JobApp, client: Any
) -> None:
    queued = await in_the_stream(app, client, 3)
    transport = RedisTransport(app.store, config_of(app), "w1", 10.0)
    await transport.start()
    try:
        assert await transport.receive(3, 0) == []  # asks for 3; none has arrived yet
        await wait_until(lambda: transport.counts["received"] == 3, timeout=20)
    finally:
        await transport.stop()
    assert transport.counts["released"] == 3
    (row,) = await info(config_of(app))
    assert (row["length"], row["pending"]) == (3, 0)  # readable again, not after a lease
    for job in queued:
        assert (await app.get_job(job.id)).status is JobState.QUEUED  # nothing started


async def test_a_stopping_worker_lets_its_read_end_and_hands_back_what_it_got(
    app: JobApp, client: Any
) -> None:
    """A read cut short on the client's side can still take an entry on the server's,
    pending then under a consumer that is gone. Stopping lets it end instead, and hands
    back what it brought: the entry is readable by others at once."""
    await app.enqueue_many([EnqueueRequest("noop")])
    (job,) = await dispatched(app, limit=1)
    config = dataclasses.replace(config_of(app), block_seconds=3.0)
    transport = RedisTransport(app.store, config, "w1", 10.0)
    await transport.start()
    try:
        assert await transport.receive(1, 0) == []  # a slot free: a read for 1 goes out
        await wait_until(lambda: transport.asking == 1, timeout=10)
        transport.wake()  # the worker begins to stop
        stopping = asyncio.ensure_future(transport.stop())
        await wait_until(lambda: transport.stopping, timeout=10)
        await add(client, stream_of(app), DispatchTicket.of(job).to_message())
        await stopping
    finally:
        await transport.stop()
    assert transport.counts["released"] == 1
    (row,) = await info(config_of(app))
    assert (row["length"], row["pending"]) == (1, 0)  # back in the stream, held by no one
    assert (await app.get_job(job.id)).status is JobState.QUEUED


async def test_entries_read_ahead_are_held_unclaimed_and_handed_back_on_stop(
    app: JobApp, client: Any
) -> None:
    """A worker of short jobs asks for one job and for two more ahead: one read brings all
    three, one job is claimed, the two others wait unclaimed (their jobs still queued) and
    are handed back at once when the worker stops."""
    queued = await in_the_stream(app, client, 3)
    transport = RedisTransport(app.store, config_of(app), "w1", 10.0)
    await transport.start()
    try:
        (claimed,) = await transport.receive(1, 10.0, ahead=2)
        await wait_until(lambda: transport.counts["received"] == 3, timeout=10)
        assert claimed.id == queued[0].id and transport.counts["claimed"] == 1
        for job in queued[1:]:
            assert (await app.get_job(job.id)).status is JobState.QUEUED
    finally:
        await transport.stop()
    assert transport.counts["released"] == 2
    (row,) = await info(config_of(app))
    # The two read ahead are back in the stream (new entries, held by no one); the claimed
    # job's entry stays pending under w1 until its outcome is written.
    assert (row["length"], row["pending"]) == (3, 1)
    assert row["pending_per_consumer"] == {"w1": 1}


async def test_a_job_cancelled_while_its_entry_is_read_ahead_does_not_run(
    app: JobApp, client: Any
) -> None:
    queued = await in_the_stream(app, client, 3)
    transport = RedisTransport(app.store, config_of(app), "w1", 10.0)
    await transport.start()
    try:
        (first,) = await transport.receive(1, 10.0, ahead=2)
        await wait_until(lambda: transport.counts["received"] == 3, timeout=10)
        await app.cancel(queued[1].id)  # its entry waits in the worker's buffer
        rest = await transport.receive(2, 0)
        assert [first.id] + [j.id for j in rest] == [queued[0].id, queued[2].id]
        assert transport.counts["stale"] == 1
        # The stale entry is acknowledged and deleted; the two claimed stay pending.
        await wait_until(lambda: transport.counts["acked"] == 1, timeout=10)
        (row,) = await info(config_of(app))
        assert (row["length"], row["pending"]) == (2, 2)
    finally:
        await transport.stop()
    assert (await app.get_job(queued[1].id)).status is JobState.CANCELLED


def test_a_missing_redis_package_fails_at_start_with_the_install_hint(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setitem(sys.modules, "redis.asyncio", None)
    with pytest.raises(ConfigurationError, match=r"pip install 'async-job-server\[redis\]'"):
        require_redis()
    app = JobApp(settings=redis_settings("sqlite:///:memory:"))

    @app.job("noop")
    async def noop(ctx: JobContext, payload: dict[str, Any]) -> None:
        return None

    with pytest.raises(ConfigurationError, match="async-job-server"):
        app.worker()
    with pytest.raises(ConfigurationError, match="async-job-server"):
        app.scheduler()


def test_bad_redis_settings_are_refused() -> None:
    with pytest.raises(ConfigurationError, match="ASYNC_JOBS_REDIS_URL"):
        RedisConfig.from_settings(Settings(transport="redis"))
    with pytest.raises(ConfigurationError, match="redis://"):
        RedisConfig(url="http://localhost:6379")
    with pytest.raises(ConfigurationError, match="PREFIX"):
        RedisConfig(url=REDIS_URL, prefix="a{b}")
    with pytest.raises(ConfigurationError, match="ASYNC_JOBS_REDIS_USE_CASES"):
        RedisConfig(url=REDIS_URL).stream_of("reports")
    assert RedisConfig(url=REDIS_URL, prefix="p").stream_of("default") == "{p:default}:jobs"
    assert RedisConfig(url="redis+cluster://h:7000").cluster


@pytest.mark.parametrize("reachable", [True, False])
async def test_health_reports_redis(pg_database: str, reachable: bool) -> None:
    import httpx
    from fastapi import FastAPI

    from async_jobs.api import create_jobs_router
    from async_jobs.api.errors import install_error_handlers

    url = REDIS_URL if reachable else "redis://127.0.0.1:1/0"
    jobs = JobApp(settings=redis_settings(pg_database, url))
    app = FastAPI()
    app.include_router(create_jobs_router(jobs))
    install_error_handlers(app)
    async with (
        jobs,
        httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test") as c,
    ):
        health = await c.get("/health")
    if reachable:
        assert (health.status_code, health.json()) == (
            200,
            {"status": "ok", "store": "ok", "broker": "ok"},
        )
    else:
        assert health.status_code == 503 and health.headers["retry-after"]
        body = health.json()
        assert (body["status"], body["store"]) == ("unavailable", "ok")
        assert body["broker"].startswith("cannot reach Redis: ConnectionError")


async def test_redis_restarted_empty_loses_nothing_and_no_process_stops(
    pg_database: str,
) -> None:
    """A private Redis killed and started again (empty: no persistence) under a running
    worker and scheduler: they retry with backoff, make the group again, and the jobs
    whose entries went with Redis are dispatched again at their deadline."""
    from tests.acceptance.private_redis import PrivateRedis

    server = PrivateRedis()
    server.start()
    try:
        settings = redis_settings(pg_database, server.url, redis_dispatch_timeout_seconds=1)
        jobs = JobApp(settings=settings)

        @jobs.job("echo")
        async def echo(ctx: JobContext, payload: dict[str, Any]) -> int:
            return int(payload["n"])

        async with jobs:
            before = [await jobs.enqueue("echo", {"n": n}) for n in range(3)]
            async with running(jobs) as worker:
                await wait_until(lambda: all_ended(jobs, [j.id for j in before]), timeout=20)
                server.stop()
                during = [await jobs.enqueue("echo", {"n": n}) for n in range(3, 13)]
                await asyncio.sleep(1.0)  # wait-ok: the outage lasts a while, on purpose
                server.start()
                ids = [j.id for j in during]
                await wait_until(lambda: all_ended(jobs, ids), timeout=40)
                transport = worker_transport(worker)
            assert transport.counts["group_created"] == 2
            for job in before + during:
                done = await jobs.get_job(job.id)
                assert (done.status, done.attempts) == (JobState.SUCCEEDED, 1)
    finally:
        server.close()


async def test_a_backlog_is_sent_through_the_dispatch_window(pg_database: str) -> None:
    jobs = JobApp(settings=redis_settings(pg_database, dispatch_window=50))
    async with jobs, redis_client(jobs) as client:

        async def in_stream() -> int:
            return int(await client.xlen(stream_of(jobs)))

        worker = await drain_through_the_window(jobs, in_stream)
        await wait_until(lambda: drained(jobs), timeout=10)
    transport = worker_transport(worker)
    assert transport.counts["claimed"] == 500 and transport.counts["stale"] == 0


async def test_a_blocked_reader_gets_a_dispatched_batch_in_one_read(
    app: JobApp, client: Any
) -> None:
    """The dispatcher adds a batch in one script call: a worker blocked in XREADGROUP is
    answered once with all of it (one claim statement), not with its first entry alone."""
    stream = stream_of(app)
    await ensure_group(client, stream)
    await app.enqueue_many([EnqueueRequest("noop") for _ in range(20)])
    name = f"reader-{uuid.uuid4().hex[:8]}"
    reader = connect(config_of(app))
    await reader.client_setname(name)

    async def blocked() -> bool:
        return any(
            c.get("name") == name and c.get("cmd") == "xreadgroup"
            for c in await client.client_list()
        )

    dispatcher = RedisDispatcher(app.store, config_of(app), app.limits)
    try:
        read = asyncio.create_task(
            reader.xreadgroup(GROUP, "reader", {stream: ">"}, count=100, block=10_000)
        )
        await wait_until(blocked, timeout=10)
        assert await dispatcher.run_once() == 20
        answer = await asyncio.wait_for(read, 10)
    finally:
        await dispatcher.close()
        await reader.aclose()
    [(_, entries)] = answer
    tickets = [DispatchTicket.from_message(fields[FIELD]) for _, fields in entries]
    assert len(tickets) == 20
    assert len(await app.store.claim_dispatched(tickets, "reader", 10.0)) == 20
