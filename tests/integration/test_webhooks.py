"""Durable webhooks against real HTTP receivers (uvicorn on a free port), on every store."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import httpx
import pytest
import uvicorn

from async_jobs import JobApp
from async_jobs.api.app import create_api
from async_jobs.core.settings import Settings
from async_jobs.core.webhooks import WebhookConfig, WebhookSender, verify_signature
from async_jobs.domain.errors import InvalidJobError
from async_jobs.domain.jobs import AttemptOutcome, ClaimRequest, Job, OutcomeKind
from async_jobs.domain.retry import Backoff
from async_jobs.stores import store_from_dsn
from async_jobs.stores.postgres import PostgresStore
from tests.helpers import free_port, wait_until

SECRET = "s3cret"
FAST = Backoff.constant(0.05, jitter=0.0)


class Receiver:
    """A webhook receiver on a real socket: records every request, answers the statuses of
    ``script`` in turn (then 200), each after ``delay`` seconds."""

    def __init__(self, port: int | None = None) -> None:
        self.port = port or free_port()
        self.requests: list[dict[str, Any]] = []
        self.script: list[int] = []
        self.delay = 0.0
        self._server: uvicorn.Server | None = None
        self._task: asyncio.Task[None] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hook"

    async def __call__(
        self,
        scope: dict[str, Any],
        receive: Callable[[], Awaitable[dict[str, Any]]],
        send: Callable[[dict[str, Any]], Awaitable[None]],
    ) -> None:
        if scope["type"] != "http":
            return
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        headers = {k.decode().lower(): v.decode() for k, v in scope["headers"]}
        self.requests.append({"headers": headers, "body": body})
        if self.delay:
            await asyncio.sleep(self.delay)  # wait-ok: a slow receiver, on purpose
        status = self.script.pop(0) if self.script else 200
        await send({"type": "http.response.start", "status": status, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})

    async def start(self) -> None:
        config = uvicorn.Config(self, host="127.0.0.1", port=self.port, log_level="warning")
        self._server = uvicorn.Server(config)
        self._task = asyncio.create_task(self._server.serve())
        server = self._server
        await wait_until(lambda: server.started)

    async def stop(self) -> None:
        if self._server is not None and self._task is not None:
            self._server.should_exit = True
            await self._task
            self._server = None

    def for_delivery(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for request in self.requests:
            key = request["headers"]["x-asyncjobs-delivery"]
            counts[key] = counts.get(key, 0) + 1
        return counts


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    r = Receiver()
    await r.start()
    yield r
    await r.stop()


def settings(**kw: Any) -> Settings:
    base: dict[str, Any] = {
        "webhook_secret": SECRET,
        "webhook_allowed_hosts": ("127.0.0.1",),
    }
    base.update(kw)
    return Settings(**base)


@pytest.fixture
async def app(any_dsn: str) -> AsyncIterator[JobApp]:
    jobs = JobApp(store=store_from_dsn(any_dsn), settings=settings())
    async with jobs:
        await jobs.migrate()
        yield jobs


@pytest.fixture
async def senders() -> AsyncIterator[list[WebhookSender]]:
    """Senders made by a test, closed (their HTTP clients too) when it ends."""
    made: list[WebhookSender] = []
    yield made
    for sender in made:
        await sender.close()


def sender_for(made: list[WebhookSender], app: JobApp, **kw: Any) -> WebhookSender:
    config = WebhookConfig.from_settings(app.settings, backoff=FAST, **kw)
    sender = WebhookSender(app.store, config)
    made.append(sender)
    return sender


async def finish(app: JobApp, job: Job, kind: OutcomeKind = OutcomeKind.SUCCEEDED) -> Job:
    """Claim the job and record its end, as a worker would."""
    [claimed] = await app.store.claim_jobs(ClaimRequest("w1", 1, 30.0))
    assert claimed.id == job.id and claimed.lease_token is not None
    outcome = AttemptOutcome(
        job.id, claimed.attempts, claimed.lease_token, kind, result={"ok": True}
    )
    assert await app.store.record_outcomes([outcome]) == [job.id]
    return await app.get_job(job.id)


async def pump(sender: WebhookSender, until: Callable[[], Any], timeout: float = 10.0) -> None:
    """Run the sender's rounds (as the scheduler would) until ``until`` holds."""

    async def round_done() -> Any:
        await sender.run_once()
        await sender.drain()
        result = until()
        return await result if asyncio.iscoroutine(result) else result

    await wait_until(round_done, timeout=timeout)


async def webhook_status(app: JobApp, job: Job) -> str | None:
    fresh = await app.get_job(job.id)
    assert fresh.webhook is not None
    return fresh.webhook.status


async def test_a_succeeded_job_is_delivered_once_signed(
    app: JobApp, receiver: Receiver, senders: list[WebhookSender]
) -> None:
    job = await app.enqueue("echo", {"x": 1}, webhook_url=receiver.url)
    before = await app.get_job(job.id)
    assert before.webhook is not None and before.webhook.status is None  # not ended yet
    ended = await finish(app, job)
    sender = sender_for(senders, app)
    await pump(sender, lambda: webhook_status(app, job))
    for _ in range(3):  # later rounds send nothing more
        await sender.run_once()
        await sender.drain()
    assert len(receiver.requests) == 1
    request = receiver.requests[0]
    headers = request["headers"]
    assert headers["x-asyncjobs-event"] == "job.succeeded"
    assert verify_signature(
        SECRET, headers["x-asyncjobs-timestamp"], request["body"], headers["x-asyncjobs-signature"]
    )
    assert not verify_signature(
        "other", headers["x-asyncjobs-timestamp"], request["body"], headers["x-asyncjobs-signature"]
    )
    body = json.loads(request["body"])
    assert body["id"] == str(job.id) and body["status"] == "succeeded"
    assert body["result"] == ended.result
    shown = (await app.get_job(job.id)).to_json()["webhook"]
    assert shown["status"] == "delivered" and shown["attempts"] == 1
    [delivery] = shown["deliveries"]
    assert delivery["id"] == headers["x-asyncjobs-delivery"]
    assert [a["status_code"] for a in delivery["attempts"]] == [200]
    assert delivery["attempts"][0]["duration_ms"] >= 0


async def test_retried_after_two_500s_then_delivered(
    app: JobApp, receiver: Receiver, senders: list[WebhookSender]
) -> None:
    receiver.script = [500, 500]
    job = await app.enqueue("echo", {}, webhook_url=receiver.url)
    await finish(app, job, OutcomeKind.FAILED)
    sender = sender_for(senders, app)
    await pump(sender, lambda: _status_is(app, job, "delivered"))
    assert len(receiver.requests) == 3
    assert {r["headers"]["x-asyncjobs-event"] for r in receiver.requests} == {"job.failed"}
    shown = await app.get_job(job.id)
    assert shown.webhook is not None and shown.webhook.attempts == 3
    [delivery] = shown.webhook.deliveries
    assert [a.status_code for a in delivery.log] == [500, 500, 200]
    assert delivery.log[0].error == "HTTP 500"


async def _status_is(app: JobApp, job: Job, status: str) -> bool:
    return await webhook_status(app, job) == status


async def test_failed_after_max_attempts(
    app: JobApp, receiver: Receiver, senders: list[WebhookSender]
) -> None:
    receiver.script = [500] * 10
    job = await app.enqueue("echo", {}, webhook_url=receiver.url)
    await finish(app, job)
    sender = sender_for(senders, app, max_attempts=3)
    await pump(sender, lambda: _status_is(app, job, "failed"))
    for _ in range(3):
        await sender.run_once()
        await sender.drain()
    assert len(receiver.requests) == 3
    shown = await app.get_job(job.id)
    assert shown.webhook is not None and shown.webhook.attempts == 3


async def test_receiver_down_then_up(app: JobApp, senders: list[WebhookSender]) -> None:
    down = Receiver()
    job = await app.enqueue("echo", {}, webhook_url=down.url)
    await finish(app, job, OutcomeKind.FAILED)
    sender = sender_for(senders, app)

    async def two_errors() -> bool:
        shown = await app.get_job(job.id)
        assert shown.webhook is not None
        return shown.webhook.attempts >= 2

    await pump(sender, two_errors)
    await down.start()
    try:
        await pump(sender, lambda: _status_is(app, job, "delivered"))
    finally:
        await down.stop()
    shown = await app.get_job(job.id)
    assert shown.webhook is not None
    log = shown.webhook.deliveries[0].log
    assert all(a.status_code is None and a.error for a in log[:-1])
    assert "Connect" in (log[0].error or "")
    assert log[-1].status_code == 200
    assert len(down.requests) == 1


async def test_private_targets_are_refused_unless_allow_listed(
    any_dsn: str, receiver: Receiver, senders: list[WebhookSender]
) -> None:
    strict = JobApp(store=store_from_dsn(any_dsn), settings=Settings())
    async with strict:
        await strict.migrate()
        for url in (
            receiver.url,
            "http://localhost:9/x",
            "http://10.1.2.3/x",
            "http://[::1]/x",
            "http://169.254.169.254/latest",
            "http://224.0.0.1/x",
        ):
            with pytest.raises(InvalidJobError) as caught:
                await strict.enqueue("echo", {}, webhook_url=url)
            assert caught.value.details["field"] == "webhook_url"
        # A name that resolves to a private address passes enqueue and fails at send time,
        # once, without retries.
        job = await strict.enqueue("echo", {}, webhook_url="http://hooks.example.test/x")
        await finish(strict, job)

        async def resolve(host: str, port: int) -> list[str]:
            return ["127.0.0.1"]

        config = WebhookConfig(backoff=FAST)
        sender = WebhookSender(strict.store, config, resolve=resolve)
        senders.append(sender)
        await pump(sender, lambda: _status_is(strict, job, "failed"))
        shown = await strict.get_job(job.id)
        assert shown.webhook is not None and shown.webhook.attempts == 1
        error = shown.webhook.deliveries[0].log[0].error or ""
        assert "127.0.0.1" in error and "ASYNC_JOBS_WEBHOOK_ALLOWED_HOSTS" in error
    assert receiver.requests == []


async def test_allow_listed_name_is_sent_after_resolution(any_dsn: str, receiver: Receiver) -> None:
    jobs = JobApp(
        store=store_from_dsn(any_dsn), settings=Settings(webhook_allowed_hosts=("127.0.0.0/8",))
    )
    async with jobs:
        await jobs.migrate()
        url = f"http://hooks.example.test:{receiver.port}/hook"
        job = await jobs.enqueue("echo", {}, webhook_url=url)
        await finish(jobs, job)

        async def resolve(host: str, port: int) -> list[str]:
            return ["127.0.0.1"]

        transport = httpx.AsyncHTTPTransport()

        class Pinned(httpx.AsyncBaseTransport):
            """Sends hooks.example.test to 127.0.0.1, as the resolver said."""

            async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
                request.url = request.url.copy_with(host="127.0.0.1")
                return await transport.handle_async_request(request)

            async def aclose(self) -> None:
                await transport.aclose()

        async with httpx.AsyncClient(transport=Pinned()) as client:
            sender = WebhookSender(
                jobs.store,
                WebhookConfig.from_settings(jobs.settings, backoff=FAST),
                client=client,
                resolve=resolve,
            )
            await pump(sender, lambda: _status_is(jobs, job, "delivered"))
        headers = receiver.requests[0]["headers"]
        assert "x-asyncjobs-signature" not in headers  # no secret configured: unsigned
        assert headers["x-asyncjobs-timestamp"].isdigit()


async def test_a_job_retried_by_hand_gets_a_new_delivery_and_retention_deletes_them(
    app: JobApp, receiver: Receiver, senders: list[WebhookSender]
) -> None:
    job = await app.enqueue("echo", {}, webhook_url=receiver.url)
    await finish(app, job, OutcomeKind.FAILED)
    sender = sender_for(senders, app)
    await pump(sender, lambda: _status_is(app, job, "delivered"))
    await app.retry(job.id)
    await finish(app, job, OutcomeKind.SUCCEEDED)
    await pump(sender, lambda: len(receiver.requests) == 2)
    await sender.drain()
    shown = await app.get_job(job.id)
    assert shown.webhook is not None
    assert [d.event for d in shown.webhook.deliveries] == ["failed", "succeeded"]
    assert [r["headers"]["x-asyncjobs-event"] for r in receiver.requests] == [
        "job.failed",
        "job.succeeded",
    ]
    await wait_until(lambda: _status_is(app, job, "delivered"))
    assert (await app.cleanup(0))["succeeded"] == 1
    assert await app.store.get_webhook_deliveries(job.id) == []


async def test_jobs_without_a_webhook_show_null_and_lists_do_not_read_deliveries(
    app: JobApp, receiver: Receiver
) -> None:
    plain = await app.enqueue("echo", {})
    hooked = await app.enqueue("echo", {}, webhook_url=receiver.url)
    api = create_api(app)
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=api), base_url="http://test"
    ) as http:
        assert (await http.get(f"/jobs/{plain.id}")).json()["webhook"] is None
        shown = (await http.get(f"/jobs/{hooked.id}")).json()["webhook"]
        assert shown == {"status": None, "attempts": 0, "deliveries": []}
        listed = (await http.get("/jobs")).json()["items"]
        assert {item["webhook"] is None for item in listed} == {True}
        refused = await http.post(
            "/jobs", json={"type": "echo", "webhook_url": "http://192.168.1.1/x"}
        )
        assert refused.status_code == 422
        assert refused.json()["error"]["details"]["field"] == "webhook_url"


async def test_the_leading_scheduler_sends_webhooks(app: JobApp, receiver: Receiver) -> None:
    job = await app.enqueue("echo", {}, webhook_url=receiver.url)
    await finish(app, job)
    scheduler = app.scheduler()
    assert scheduler.webhooks is not None
    assert await scheduler.run_once()
    await wait_until(lambda: len(receiver.requests) == 1)
    await scheduler.webhooks.drain()
    await scheduler.webhooks.close()
    assert await webhook_status(app, job) == "delivered"


async def succeed_all(store: PostgresStore) -> int:
    """End every pending job succeeded, claim by claim (a use case runs 10 at once)."""
    done = 0
    while claimed := await store.claim_jobs(ClaimRequest("w", 50, 30.0)):
        outcomes = [
            AttemptOutcome(j.id, j.attempts, j.lease_token, OutcomeKind.SUCCEEDED)
            for j in claimed
            if j.lease_token is not None
        ]
        done += len(await store.record_outcomes(outcomes))
    return done


async def test_two_senders_never_send_the_same_attempt(
    pg_database: str, receiver: Receiver
) -> None:
    receiver.delay = 0.02  # slow answers: both senders lease while the other sends
    stores = [PostgresStore(pg_database), PostgresStore(pg_database)]
    jobs = JobApp(store=stores[0], settings=settings())
    async with jobs:
        await stores[1].open()
        try:
            for i in range(30):
                await jobs.enqueue("echo", {"i": i}, webhook_url=receiver.url)
            assert await succeed_all(stores[0]) == 30
            senders = [
                WebhookSender(store, WebhookConfig.from_settings(jobs.settings, backoff=FAST))
                for store in stores
            ]

            async def racing() -> bool:
                await asyncio.gather(*(s.run_once() for s in senders))
                return len(receiver.for_delivery()) == 30

            await wait_until(racing, timeout=20)
            for _ in range(3):  # more rounds after the last delivery send nothing
                for s in senders:
                    await s.drain()
                await asyncio.gather(*(s.run_once() for s in senders))
            for s in senders:
                await s.close()
            assert set(receiver.for_delivery().values()) == {1}
            assert sum(s.sent for s in senders) == 30
        finally:
            await stores[1].close()


async def test_two_senders_share_retries_without_sending_an_attempt_twice(
    pg_database: str, receiver: Receiver
) -> None:
    receiver.delay = 0.01
    receiver.script = [500] * 20  # the first 20 requests fail, whichever delivery they are
    stores = [PostgresStore(pg_database), PostgresStore(pg_database)]
    jobs = JobApp(store=stores[0], settings=settings())
    async with jobs:
        await stores[1].open()
        try:
            ids = [
                (await jobs.enqueue("echo", {"i": i}, webhook_url=receiver.url)).id
                for i in range(20)
            ]
            assert await succeed_all(stores[0]) == 20
            senders = [
                WebhookSender(store, WebhookConfig.from_settings(jobs.settings, backoff=FAST))
                for store in stores
            ]

            async def all_delivered() -> bool:
                await asyncio.gather(*(s.run_once() for s in senders))
                states = [await jobs.get_job(i) for i in ids]
                return all(
                    s.webhook is not None and s.webhook.status == "delivered" for s in states
                )

            await wait_until(all_delivered, timeout=30)
            for s in senders:
                await s.close()
            assert len(receiver.requests) == 40
            # each (delivery, attempt) was sent once: the attempts the store recorded match
            # the requests the receiver saw, one for one
            recorded = 0
            for job_id in ids:
                for delivery in await stores[0].get_webhook_deliveries(job_id):
                    recorded += len(delivery.log)
                    assert delivery.attempts == len(delivery.log)
            assert recorded == 40
            assert sum(s.sent for s in senders) == 40 and sum(s.lost for s in senders) == 0
            assert all(s.sent > 0 for s in senders)  # both took part
        finally:
            await stores[1].close()
