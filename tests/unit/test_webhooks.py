"""Webhook logic without sockets: signatures, target rules, settings, and the sender's
decisions on a memory store with httpx.MockTransport."""

from __future__ import annotations

import hashlib
import hmac
import json
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from async_jobs import JobApp, MemoryStore
from async_jobs.core.settings import Settings
from async_jobs.core.webhooks import WebhookConfig, WebhookSender, sign, verify_signature
from async_jobs.domain.errors import ConfigurationError, InvalidJobError
from async_jobs.domain.jobs import AttemptOutcome, ClaimRequest, OutcomeKind
from async_jobs.domain.retry import Backoff
from async_jobs.domain.webhooks import AllowList, AttemptResult, check_webhook_target


def test_signature_is_hmac_sha256_of_timestamp_dot_body() -> None:
    body = b'{"id": "x"}'
    expected = hmac.new(b"k", b"1700000000." + body, hashlib.sha256).hexdigest()
    assert sign("k", 1700000000, body) == f"v1={expected}"
    assert verify_signature("k", "1700000000", body, f"v1={expected}", now=1700000100)
    assert verify_signature("k", 1700000000, body.decode(), f"v0=zz, v1={expected}", now=1.7e9)
    assert not verify_signature("k2", "1700000000", body, f"v1={expected}", now=1.7e9)
    assert not verify_signature("k", "1700000000", body + b" ", f"v1={expected}", now=1.7e9)
    assert not verify_signature("k", "1700000000", body, f"v1={expected}", now=1700000301)
    assert not verify_signature("k", "soon", body, f"v1={expected}", now=1.7e9)


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1/x",
        "http://localhost:8000/x",
        "http://api.localhost/x",
        "http://10.0.0.1/x",
        "http://172.16.5.4/x",
        "http://192.168.0.10/x",
        "http://169.254.169.254/latest/meta-data",
        "http://[::1]/x",
        "http://[fe80::1]/x",
        "http://[::ffff:127.0.0.1]/x",
        "http://224.0.0.1/x",
        "http://0.0.0.0/x",
        "http://240.0.0.1/x",
    ],
)
def test_private_literal_targets_are_refused_at_enqueue(url: str) -> None:
    with pytest.raises(InvalidJobError) as caught:
        check_webhook_target(url, AllowList())
    assert caught.value.details == {"field": "webhook_url"}


def test_public_and_named_targets_pass_and_the_allow_list_opens_private_ones() -> None:
    check_webhook_target("https://8.8.8.8/x", AllowList())
    check_webhook_target("https://hooks.example.com/x", AllowList())  # checked when sent
    allow = AllowList.parse(["127.0.0.1", "10.0.0.0/8", "LocalHost", " ", "[::1]"])
    for url in ("http://127.0.0.1:9/x", "http://10.9.8.7/x", "http://localhost/x", "http://[::1]/"):
        check_webhook_target(url, allow)
    with pytest.raises(InvalidJobError):
        check_webhook_target("http://192.168.1.1/x", allow)
    with pytest.raises(ValueError, match="neither a host name nor a network"):
        AllowList.parse(["not a/cidr"])


def test_settings_read_the_webhook_variables() -> None:
    settings = Settings.from_env(
        {
            "ASYNC_JOBS_WEBHOOK_SECRET": "global",
            "ASYNC_JOBS_WEBHOOK_SECRETS": '{"acme": "acme-secret"}',
            "ASYNC_JOBS_WEBHOOK_ALLOWED_HOSTS": "127.0.0.1, 10.0.0.0/8,hooks.internal",
            "ASYNC_JOBS_WEBHOOK_MAX_ATTEMPTS": "5",
            "ASYNC_JOBS_WEBHOOK_TIMEOUT_SECONDS": "2.5",
        }
    )
    assert settings.webhook_secret_for("acme") == "acme-secret"
    assert settings.webhook_secret_for("other") == "global"
    assert settings.webhook_allowed_hosts == ("127.0.0.1", "10.0.0.0/8", "hooks.internal")
    assert (settings.webhook_max_attempts, settings.webhook_timeout_seconds) == (5, 2.5)
    assert Settings.from_env({}).webhook_secret_for("acme") is None
    with pytest.raises(ConfigurationError):
        Settings.from_env({"ASYNC_JOBS_WEBHOOK_ALLOWED_HOSTS": "10.0.0.0/99"})
    with pytest.raises(ConfigurationError):
        Settings.from_env({"ASYNC_JOBS_WEBHOOK_SECRETS": '{"acme": 1}'})


async def test_enqueue_refuses_a_private_literal_target() -> None:
    async with JobApp(store=MemoryStore(), settings=Settings()) as app:
        with pytest.raises(InvalidJobError):
            await app.enqueue("echo", {}, webhook_url="http://127.0.0.1:9/hook")
    allowed = Settings(webhook_allowed_hosts=("127.0.0.1",))
    async with JobApp(store=MemoryStore(), settings=allowed) as app:
        job = await app.enqueue("echo", {}, webhook_url="http://127.0.0.1:9/hook")
        assert job.to_json()["webhook"] is None  # a stored job, not read through get_job
        shown = await app.get_job(job.id)
        assert shown.to_json()["webhook"] == {"status": None, "attempts": 0, "deliveries": []}
        plain = await app.enqueue("echo", {})
        assert (await app.get_job(plain.id)).to_json()["webhook"] is None


@pytest.fixture
async def ended() -> AsyncIterator[JobApp]:
    """A memory app whose one job (tenant acme, webhook to a public name) has succeeded."""
    app = JobApp(store=MemoryStore(), settings=Settings())
    async with app:
        job = await app.enqueue("echo", {"n": 1}, tenant_id="acme", webhook_url="https://h.test/x")
        [claimed] = await app.store.claim_jobs(ClaimRequest("w", 1, 30.0))
        assert claimed.lease_token is not None
        outcome = AttemptOutcome(job.id, 1, claimed.lease_token, OutcomeKind.SUCCEEDED)
        await app.store.record_outcomes([outcome])
        yield app


async def public(host: str, port: int) -> list[str]:
    return ["93.184.216.34"]


async def private(host: str, port: int) -> list[str]:
    return ["93.184.216.34", "10.0.0.7"]


async def unresolvable(host: str, port: int) -> list[str]:
    raise OSError("Name or service not known")


async def one_attempt(
    app: JobApp, handler: Any, config: WebhookConfig, resolve: Any = public
) -> tuple[AttemptResult, Any]:
    async with httpx.AsyncClient(transport=httpx.MockTransport(handler)) as client:
        sender = WebhookSender(app.store, config, client=client, resolve=resolve, clock=lambda: 1e9)
        assert await sender.sweep() == 1
        [delivery] = await app.store.lease_webhook_deliveries(10, 60)
        outcome = await sender.send(delivery)
        assert await app.store.record_webhook_attempt(outcome)
        assert not await app.store.record_webhook_attempt(outcome)  # the lease is spent
        return outcome.result, outcome


async def test_a_2xx_delivers_with_the_tenants_own_secret(ended: JobApp) -> None:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(204)

    config = WebhookConfig(secret="global", secrets={"acme": "acme-secret"})
    result, _ = await one_attempt(ended, handler, config)
    assert result is AttemptResult.DELIVERED
    [request] = seen
    assert request.headers["x-asyncjobs-timestamp"] == "1000000000"
    assert request.headers["x-asyncjobs-event"] == "job.succeeded"
    assert verify_signature(
        "acme-secret",
        request.headers["x-asyncjobs-timestamp"],
        request.content,
        request.headers["x-asyncjobs-signature"],
        now=1e9,
    )
    assert json.loads(request.content)["status"] == "succeeded"


async def test_a_5xx_is_retried_after_the_backoff(ended: JobApp) -> None:
    config = WebhookConfig(backoff=Backoff.exponential(2, cap_seconds=60, jitter=1.0))
    result, outcome = await one_attempt(ended, lambda r: httpx.Response(503), config)
    assert result is AttemptResult.RETRY and 0 <= outcome.retry_delay_seconds <= 2
    assert (outcome.record.status_code, outcome.record.error) == (503, "HTTP 503")


async def test_a_connection_error_is_retried(ended: JobApp) -> None:
    def refuse(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("connection refused")

    result, outcome = await one_attempt(ended, refuse, WebhookConfig())
    assert result is AttemptResult.RETRY
    assert outcome.record.status_code is None
    assert outcome.record.error == "ConnectError: connection refused"


async def test_a_name_resolving_to_a_private_address_fails_without_retry(ended: JobApp) -> None:
    def never(request: httpx.Request) -> httpx.Response:
        raise AssertionError("must not be sent")

    result, outcome = await one_attempt(ended, never, WebhookConfig(), resolve=private)
    assert result is AttemptResult.FAILED
    assert "10.0.0.7" in (outcome.record.error or "")
    job_id = (await ended.list_jobs()).items[0].id
    [delivery] = await ended.store.get_webhook_deliveries(job_id)
    assert delivery.status.value == "failed" and len(delivery.log) == 1


async def test_a_name_that_does_not_resolve_is_retried(ended: JobApp) -> None:
    def never(request: httpx.Request) -> httpx.Response:
        raise AssertionError("must not be sent")

    result, outcome = await one_attempt(ended, never, WebhookConfig(), resolve=unresolvable)
    assert result is AttemptResult.RETRY
    assert (outcome.record.error or "").startswith("cannot resolve h.test")
