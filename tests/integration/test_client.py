"""``AsyncJobsClient`` and ``JobsClient`` against the real app in-process (ASGI), on every
store, with a worker running the demo handlers."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
from fastapi import FastAPI

from async_jobs import (
    AsyncJobsClient,
    Backoff,
    EnqueueRequest,
    IdempotencyConflictError,
    InvalidJobError,
    InvalidTransitionError,
    Job,
    JobApp,
    JobNotFoundError,
    JobsClient,
    JobState,
    Priority,
    QuotaExceededError,
    Settings,
    Stats,
    TenantQuota,
    UnknownJobTypeError,
    WorkerConfig,
)
from async_jobs.api import create_api, create_jobs_router
from async_jobs.api.errors import install_error_handlers
from async_jobs.domain.errors import AuthTokenError, ForbiddenError, RemoteHttpError
from async_jobs.stores import store_from_dsn
from tests.helpers import wait_until

# What these tests check lies above the store: they run on the memory store, and one smoke
# test on every store (the store suites cover the stores).
pytestmark = pytest.mark.stores("memory")

FAST_RETRIES = Backoff.constant(0.01, jitter=0.5)
LATER = 3600  # delay_seconds of jobs that must stay pending during a test


@contextlib.asynccontextmanager
async def running_api(dsn: str, settings: Settings | None = None) -> AsyncIterator[FastAPI]:
    jobs = JobApp(
        settings=settings or Settings(),
        store=store_from_dsn(dsn),
        handler_modules=["async_jobs.demo"],
    )
    app = create_api(
        jobs, worker=WorkerConfig(concurrency=4, poll_interval_seconds=0.05), migrate=True
    )
    async with app.router.lifespan_context(app):
        yield app


@pytest.fixture
async def api(any_dsn: str) -> AsyncIterator[FastAPI]:
    async with running_api(any_dsn) as app:
        yield app


class Recording(httpx.AsyncBaseTransport):
    """Passes requests through, keeping each one (method, path, query, JSON body)."""

    def __init__(self, inner: httpx.AsyncBaseTransport) -> None:
        self.inner = inner
        self.requests: list[httpx.Request] = []

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        await request.aread()
        self.requests.append(request)
        return await self.inner.handle_async_request(request)

    def paths(self, method: str | None = None) -> list[str]:
        return [r.url.path for r in self.requests if method in (None, r.method)]


class Flaky(httpx.AsyncBaseTransport):
    """Fails the first requests, one mode each, then passes through: ``connect`` (never
    reaches the server), ``503`` (answered by a proxy, never reaches the server), ``lost``
    (the server handles it, its answer is lost on the way back)."""

    def __init__(self, inner: httpx.AsyncBaseTransport, *failures: str) -> None:
        self.inner = inner
        self.failures = list(failures)
        self.bodies: list[bytes] = []

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        self.bodies.append(await request.aread())
        mode = self.failures.pop(0) if self.failures else None
        if mode == "connect":
            raise httpx.ConnectError("connection refused", request=request)
        if mode == "503":
            return httpx.Response(503, text="<html>service unavailable</html>", request=request)
        response = await self.inner.handle_async_request(request)
        if mode == "lost":
            await response.aread()
            raise httpx.ReadError("connection reset by peer", request=request)
        return response


class ThreadBridge(httpx.BaseTransport):
    """Lets a blocking ``JobsClient``, run in a thread, reach the in-process app served on
    the test's event loop."""

    def __init__(self, inner: httpx.AsyncBaseTransport, loop: asyncio.AbstractEventLoop) -> None:
        self.inner = inner
        self.loop = loop

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        content = request.read()

        async def send() -> httpx.Response:
            forwarded = httpx.Request(
                request.method, request.url, headers=request.headers, content=content
            )
            response = await self.inner.handle_async_request(forwarded)
            body = await response.aread()
            return httpx.Response(response.status_code, headers=response.headers, content=body)

        return asyncio.run_coroutine_threadsafe(send(), self.loop).result(timeout=60)


def async_client(
    app: FastAPI, transport: httpx.AsyncBaseTransport | None = None, **kwargs: Any
) -> AsyncJobsClient:
    return AsyncJobsClient(
        "http://test",
        transport=transport or httpx.ASGITransport(app=app),
        retry_backoff=FAST_RETRIES,
        **kwargs,
    )


@pytest.fixture
async def client(api: FastAPI) -> AsyncIterator[AsyncJobsClient]:
    async with async_client(api) as c:
        yield c


@pytest.mark.stores("memory", "sqlite", "postgres")  # the smoke test on every store
async def test_enqueue_get_and_wait_answer_typed_jobs(client: AsyncJobsClient) -> None:
    job = await client.enqueue("echo", {"n": 1})
    assert isinstance(job, Job)
    assert (job.type, job.payload, job.priority) == ("echo", {"n": 1}, Priority.MEDIUM)
    assert job.created_at.tzinfo is not None
    uuid.UUID(job.idempotency_key or "")  # the client's own key, so that it may retry
    done = await client.wait(job.id, timeout=10)
    assert done.status is JobState.SUCCEEDED
    assert done.result == {"n": 1}
    assert done.attempts == 1 and done.finished_at is not None
    fetched = await client.get(str(job.id))
    assert fetched.id == job.id and fetched.status is JobState.SUCCEEDED


async def test_enqueue_sends_every_option(client: AsyncJobsClient) -> None:
    run_at = datetime.now(UTC) + timedelta(hours=1)
    expires_at = run_at + timedelta(hours=1)
    job = await client.enqueue(
        "echo",
        {"to": "a@b.c"},
        tenant_id="acme",
        use_case="mail",
        priority=Priority.HIGH,
        run_at=run_at,
        delay_tolerance_seconds=60,
        max_attempts=7,
        timeout_seconds=12.5,
        idempotency_key="mine",
        webhook_url="https://example.com/hook",
        backoff=Backoff.constant(5),
        expires_at=expires_at,
    )
    assert (job.tenant_id, job.use_case, job.priority) == ("acme", "mail", Priority.HIGH)
    assert job.status is JobState.PENDING
    assert abs((job.run_at - run_at).total_seconds()) < 0.01
    assert abs((job.expires_at or run_at) - expires_at) < timedelta(milliseconds=10)
    assert (job.deadline_at - job.run_at).total_seconds() == pytest.approx(60)
    assert (job.max_attempts, job.timeout_seconds) == (7, 12.5)
    assert (job.idempotency_key, job.webhook_url) == ("mine", "https://example.com/hook")
    assert job.backoff == Backoff.constant(5)
    delayed = await client.enqueue("echo", delay_seconds=LATER, priority="low", backoff=None)
    assert delayed.run_at > datetime.now(UTC) + timedelta(minutes=59)
    assert delayed.priority is Priority.LOW and delayed.payload == {}


async def test_a_repeated_idempotency_key_answers_the_same_job(client: AsyncJobsClient) -> None:
    first = await client.enqueue("echo", {"n": 1}, idempotency_key="k", delay_seconds=LATER)
    again = await client.enqueue("echo", {"n": 1}, idempotency_key="k", delay_seconds=LATER)
    assert again.id == first.id
    with pytest.raises(IdempotencyConflictError) as conflict:
        await client.enqueue("echo", {"n": 2}, idempotency_key="k", delay_seconds=LATER)
    assert conflict.value.details["job_id"] == str(first.id)
    other = await client.enqueue("echo", {"n": 1}, delay_seconds=LATER)
    assert other.id != first.id  # without a key of the caller's, every call is a new job


async def test_run_returns_the_result_of_the_handler(client: AsyncJobsClient) -> None:
    echoed = await client.run("echo", {"hello": "world"}, timeout=10)
    assert (echoed.status, echoed.result) == (JobState.SUCCEEDED, {"hello": "world"})
    slept = await client.run("sleep", {"seconds": 0.2, "message": "m"}, timeout=10, tenant_id="t")
    assert slept.status is JobState.SUCCEEDED
    assert slept.result == {"slept_seconds": 0.2, "message": "m"}
    assert slept.tenant_id == "t"
    failed = await client.run("fail", {"message": "no"}, max_attempts=1, timeout=10)
    assert failed.status is JobState.FAILED
    assert failed.error is not None and failed.error.message == "no"


async def test_wait_returns_the_job_as_it_stands_after_the_timeout(api: FastAPI) -> None:
    recording = Recording(httpx.ASGITransport(app=api))
    async with async_client(api, recording) as client:
        job = await client.enqueue("echo", delay_seconds=LATER)
        loop = asyncio.get_running_loop()
        started = loop.time()
        waited = await client.wait(job.id, timeout=0.5)
        took = loop.time() - started
        unfinished = await client.run("echo", delay_seconds=LATER, timeout=0.3)
    assert waited.status is JobState.PENDING
    assert 0.5 <= took < 1.5
    gets = [r for r in recording.requests if r.method == "GET"]
    assert 1 <= len(gets) <= 8  # polls 0.1 s apart and more (or one held request)
    assert all("wait" in r.url.params for r in gets)
    assert float(gets[0].url.params["wait"]) == pytest.approx(0.5, abs=0.05)
    assert unfinished.status is JobState.PENDING


async def test_enqueue_many_takes_dicts_and_requests(client: AsyncJobsClient) -> None:
    jobs = await client.enqueue_many(
        [
            {"type": "echo", "payload": {"n": 0}, "delay_seconds": LATER},
            {"type": "echo", "payload": {"n": 1}, "priority": Priority.HIGH, "delay_seconds": 60},
            EnqueueRequest("echo", {"n": 2}, tenant_id="acme", delay=LATER),
            EnqueueRequest("echo", {"n": 3}, idempotency_key="batch-3"),
        ]
    )
    assert [j.payload["n"] for j in jobs] == [0, 1, 2, 3]
    assert jobs[1].priority is Priority.HIGH and jobs[2].tenant_id == "acme"
    keys = [j.idempotency_key for j in jobs]
    assert keys[3] == "batch-3" and len(set(keys)) == 4 and None not in keys
    assert jobs[2].run_at > datetime.now(UTC) + timedelta(minutes=59)
    assert (await client.wait(jobs[3].id, 10)).result == {"n": 3}
    with pytest.raises(UnknownJobTypeError):
        await client.enqueue_many([{"type": "echo"}, {"type": "no_such_type"}])
    assert len([j async for j in client.list()]) == 4  # all or none


async def test_list_follows_the_cursor_across_pages(api: FastAPI) -> None:
    recording = Recording(httpx.ASGITransport(app=api))
    async with async_client(api, recording) as client:
        made = [
            await client.enqueue("echo", {"i": i}, delay_seconds=LATER, tenant_id=f"t{i % 2}")
            for i in range(7)
        ]
        listed = [job async for job in client.list(limit=2)]
        pages = recording.paths("GET")
        evens = [job async for job in client.list(tenant_id="t0", status=JobState.PENDING)]
        cutoff = made[3].created_at
        newer = [job async for job in client.list(created_after=cutoff, limit=1, type="echo")]
        none = [job async for job in client.list(status="succeeded")]
        async with contextlib.aclosing(client.list(limit=3)) as newest_first:  # type: ignore[type-var]
            first = await anext(newest_first)
    assert [job.id for job in listed] == [job.id for job in reversed(made)]  # newest first
    assert pages == ["/jobs"] * 4  # 2 + 2 + 2 + 1
    assert all(isinstance(job, Job) for job in listed)
    assert sorted(job.payload["i"] for job in evens) == [0, 2, 4, 6]
    assert {j.id for j in made[4:]} <= {j.id for j in newer} <= {j.id for j in made[3:]}
    assert none == []
    assert first.id == made[-1].id


async def test_cancel_retry_and_invalid_transitions(client: AsyncJobsClient) -> None:
    job = await client.enqueue("echo", delay_seconds=LATER)
    cancelled = await client.cancel(job.id)
    assert (cancelled.status, cancelled.reason) == (JobState.CANCELLED, "cancelled")
    retried = await client.retry(job.id)
    assert retried.status is JobState.PENDING and retried.reason == "manual_retry"
    with pytest.raises(InvalidTransitionError) as not_ended:
        await client.retry(job.id)
    assert not_ended.value.details["status"] in ("pending", "running", "succeeded")  # due now
    done = await client.run("echo", {"a": 1}, timeout=10)
    assert done.status is JobState.SUCCEEDED
    with pytest.raises(InvalidTransitionError) as ended:
        await client.cancel(done.id)
    assert ended.value.details == {"status": "succeeded"}


async def test_error_answers_are_typed_exceptions(client: AsyncJobsClient) -> None:
    with pytest.raises(JobNotFoundError):
        await client.get(uuid.uuid4())
    with pytest.raises(JobNotFoundError):
        await client.cancel("not-a-uuid")
    with pytest.raises(JobNotFoundError):
        await client.wait("../health", timeout=1)  # quoted: never another route
    with pytest.raises(UnknownJobTypeError) as unknown:
        await client.enqueue("no_such_type")
    assert "no_such_type" in unknown.value.message
    with pytest.raises(InvalidJobError) as invalid:
        await client.enqueue("echo", max_attempts=0)
    assert "max_attempts" in invalid.value.message
    with pytest.raises(InvalidJobError) as bad_priority:
        await client.enqueue("echo", priority="urgent")
    assert "priority" in bad_priority.value.message
    with pytest.raises(InvalidJobError):
        await client.enqueue("echo", run_at=datetime(2030, 1, 1))  # no time zone
    with pytest.raises(InvalidJobError):
        [_ async for _ in client.list(limit=0)]
    assert [_ async for _ in client.list()] == []  # nothing was stored


async def test_a_quota_refusal_is_quota_exceeded_with_retry_after(any_dsn: str) -> None:
    quotas = {"acme": {"*": TenantQuota(max_pending=1)}}
    settings = Settings(per_tenant_quotas=quotas)
    async with running_api(any_dsn, settings) as app, async_client(app) as client:
        await client.enqueue("echo", tenant_id="acme", delay_seconds=LATER)
        with pytest.raises(QuotaExceededError) as refused:
            await client.enqueue("echo", tenant_id="acme", delay_seconds=LATER)
        other = await client.enqueue("echo", tenant_id="other", delay_seconds=LATER)
    assert refused.value.retry_after_seconds >= 1
    assert refused.value.code == "quota_exceeded"
    assert other.tenant_id == "other"


async def test_stats_use_cases_cleanup_and_health(client: AsyncJobsClient) -> None:
    done = await client.run("echo", {"x": 1}, tenant_id="acme", use_case="reports", timeout=10)
    await client.enqueue("echo", delay_seconds=LATER, tenant_id="other")
    stats = await client.stats()
    assert isinstance(stats, Stats)
    counts = {(c.tenant_id, c.status): c.count for c in stats.counts}
    assert counts[("acme", "succeeded")] == 1 and counts[("other", "pending")] == 1
    assert stats.finished_last_hour.get("succeeded") == 1
    assert set(stats.run_seconds) == {"p50", "p95", "p99"}
    own = await client.stats(tenant_id="acme")
    assert {c.tenant_id for c in own.counts} == {"acme"}
    uncounted = await client.stats(tenant_id="acme", counts=False)
    assert uncounted.counts == [] and uncounted.finished_last_hour == own.finished_last_hour

    paused = await client.pause("reports")
    assert (paused.name, paused.paused) == ("reports", True)
    assert paused.updated_at is not None and paused.updated_at.tzinfo is not None
    held = await client.enqueue("echo", use_case="reports")
    assert {u.name: u.paused for u in await client.use_cases()}["reports"] is True
    resumed = await client.resume("reports")
    assert resumed.paused is False
    assert (await client.wait(held.id, 10)).status is JobState.SUCCEEDED

    kept = await client.cleanup()  # the retention settings: a day for succeeded jobs
    assert kept.get("succeeded") == 0
    deleted = await wait_until(lambda: _deleted_some(client), timeout=5)
    assert deleted["succeeded"] == 2
    with pytest.raises(JobNotFoundError):
        await client.get(done.id)
    assert (await client.health())["status"] == "ok"


async def _deleted_some(client: AsyncJobsClient) -> dict[str, int] | None:
    deleted = await client.cleanup(older_than_hours=0)
    return deleted if any(deleted.values()) else None


async def test_tokens_are_sent_and_refusals_are_typed(any_dsn: str) -> None:
    settings = Settings(api_tokens={"admin-token": "*", "acme-token": "acme"})
    async with running_api(any_dsn, settings) as app:
        async with async_client(app, token="admin-token") as admin:
            job = await admin.enqueue("echo", delay_seconds=LATER, tenant_id="acme")
            assert (await admin.pause("reports")).paused
        async with async_client(app, token="acme-token") as tenant:
            assert (await tenant.get(job.id)).tenant_id == "acme"
            mine = await tenant.enqueue("echo", delay_seconds=LATER)
            assert mine.tenant_id == "acme"
            with pytest.raises(ForbiddenError):
                await tenant.pause("reports")
            with pytest.raises(ForbiddenError):
                await tenant.stats(tenant_id="other")
        async with async_client(app) as anonymous:
            with pytest.raises(AuthTokenError) as refused:
                await anonymous.get(job.id)
            assert type(refused.value) is AuthTokenError
            assert (await anonymous.health())["status"] == "ok"  # open for load balancers
        async with async_client(app, token="wrong") as wrong:
            with pytest.raises(AuthTokenError):
                [_ async for _ in wrong.list()]


@pytest.mark.parametrize(
    "failures",
    [("connect",), ("503", "503"), ("lost",), ("connect", "lost", "503")],
)
async def test_a_retried_enqueue_makes_one_job(api: FastAPI, failures: tuple[str, ...]) -> None:
    flaky = Flaky(httpx.ASGITransport(app=api), *failures)
    async with async_client(api, flaky) as client:
        job = await client.enqueue("echo", {"n": 1}, delay_seconds=LATER)
        assert len(flaky.bodies) == len(failures) + 1
        assert len(set(flaky.bodies)) == 1  # the same idempotency key on every attempt
        listed = [j async for j in client.list()]
    assert [j.id for j in listed] == [job.id]


async def test_a_retried_batch_makes_each_job_once(api: FastAPI) -> None:
    flaky = Flaky(httpx.ASGITransport(app=api), "lost", "connect")
    async with async_client(api, flaky) as client:
        jobs = await client.enqueue_many(
            [{"type": "echo", "payload": {"n": n}, "delay_seconds": LATER} for n in range(3)]
        )
        listed = [j async for j in client.list()]
    assert len(flaky.bodies) == 4 and len(set(flaky.bodies[:3])) == 1  # 3 tries, then the list
    assert sorted(j.id for j in listed) == sorted(j.id for j in jobs)
    assert len(listed) == 3


async def test_retries_give_up_after_the_last_one(api: FastAPI) -> None:
    refused = Flaky(httpx.ASGITransport(app=api), *["connect"] * 3)
    async with async_client(api, refused, retries=2) as client:
        with pytest.raises(httpx.ConnectError):
            await client.enqueue("echo")
    assert len(refused.bodies) == 3
    unavailable = Flaky(httpx.ASGITransport(app=api), *["503"] * 4)
    async with async_client(api, unavailable) as client:
        with pytest.raises(RemoteHttpError) as failed:
            await client.get(uuid.uuid4())
        assert failed.value.status_code == 503
        assert len(unavailable.bodies) == 4  # the first try and 3 retries
        assert (await client.health())["status"] == "ok"  # and then it answers again
    never = Flaky(httpx.ASGITransport(app=api), "connect")
    async with async_client(api, never, retries=0) as client:
        with pytest.raises(httpx.ConnectError):
            await client.health()


async def test_the_client_works_under_a_prefix(pg_database: str) -> None:
    jobs = JobApp(pg_database, handler_modules=["async_jobs.demo"])
    app = FastAPI()
    install_error_handlers(app)
    app.include_router(create_jobs_router(jobs), prefix="/async-jobs")
    async with (
        jobs,
        AsyncJobsClient("http://test/async-jobs", transport=httpx.ASGITransport(app=app)) as client,
    ):
        job = await client.enqueue("echo", {"n": 1})
        assert (await client.get(job.id)).payload == {"n": 1}
        assert (await client.health())["status"] == "ok"


def sync_scenario(client: JobsClient) -> None:
    """Every method of the blocking client, as a user would call them."""
    assert client.health()["status"] == "ok"
    job = client.enqueue("echo", {"n": 1}, tenant_id="acme")
    assert isinstance(job, Job) and job.tenant_id == "acme"
    done = client.wait(job.id, timeout=10)
    assert (done.status, done.result) == (JobState.SUCCEEDED, {"n": 1})
    assert client.get(job.id).status is JobState.SUCCEEDED
    ran = client.run("sleep", {"seconds": 0.1, "message": "sync"}, timeout=10)
    assert ran.result == {"slept_seconds": 0.1, "message": "sync"}
    batch = client.enqueue_many(
        [EnqueueRequest("echo", {"n": n}, delay=LATER) for n in range(3)]
        + [{"type": "echo", "delay_seconds": LATER}]
    )
    assert len(batch) == 4
    everything: Iterator[Job] = client.list(limit=2)
    assert len(list(everything)) == 6
    pending = {j.id for j in client.list(status="pending", limit=1)}
    assert pending == {j.id for j in batch}
    cancelled = client.cancel(batch[0].id)
    assert cancelled.status is JobState.CANCELLED
    assert client.retry(batch[0].id).status is JobState.PENDING
    with pytest.raises(InvalidTransitionError):
        client.cancel(done.id)
    with pytest.raises(JobNotFoundError):
        client.get(uuid.uuid4())
    with pytest.raises(InvalidJobError):
        client.enqueue("echo", delay_seconds=-1)
    assert client.pause("sync").paused and not client.resume("sync").paused
    assert {u.name: u.paused for u in client.use_cases()}["sync"] is False
    assert isinstance(client.stats(), Stats)
    assert client.stats(counts=False).counts == []
    assert client.cleanup(older_than_hours=1) == {"succeeded": 0, "cancelled": 0, "failed": 0}
    assert client.wait(batch[1].id, timeout=0.2).status is JobState.PENDING


async def test_the_blocking_client(api: FastAPI) -> None:
    bridge = ThreadBridge(httpx.ASGITransport(app=api), asyncio.get_running_loop())
    with JobsClient("http://test", transport=bridge, retry_backoff=FAST_RETRIES) as client:
        await asyncio.to_thread(sync_scenario, client)
