"""Webhooks: the sender the leading scheduler runs, and the signature receivers check.

Durable and off the worker's hot path: the worker's outcome statement is untouched. Every
scheduler round, the leader's ``WebhookSender.run_once``

1. makes the missing deliveries (``JobStore.create_webhook_deliveries``: one per terminal
   transition of a job with a ``webhook_url``; the cheap sweep looks at recently ended jobs,
   a full one runs every few minutes and on start),
2. leases as many due deliveries as it has free sending slots (``lease_webhook_deliveries``:
   each attempt is handed to one sender only, under a lease token), and
3. sends them in the background (at most ``concurrency`` at once, so a slow receiver never
   holds up the scheduler's round), recording each attempt fenced by its lease.

A 2xx answer delivers; any other answer or a connection error is retried after a capped,
jittered exponential backoff until ``max_attempts`` are spent (then ``failed``). A target
that resolves to a private, loopback, link-local, multicast or reserved address and is not
allow-listed fails at once, without retries.

Each POST carries the job as JSON (``Job.to_json()``, as it stands when sent) and::

    X-AsyncJobs-Delivery: <delivery id>       (the same on every attempt: deduplicate on it)
    X-AsyncJobs-Event: job.succeeded | job.failed | job.cancelled
    X-AsyncJobs-Timestamp: <unix seconds>
    X-AsyncJobs-Signature: v1=<hex HMAC-SHA256(secret, "<timestamp>.<body>")>

The signature is left out when no secret is configured for the job's tenant. Receivers
check it with ``verify_signature``.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import hmac
import ipaddress
import logging
import socket
import time
import uuid
from collections.abc import Awaitable, Callable, Mapping
from datetime import UTC, datetime
from urllib.parse import urlsplit

import httpx

from async_jobs.core.metrics import Metrics
from async_jobs.core.settings import Settings
from async_jobs.core.tracing import Tracing
from async_jobs.domain.errors import StoreError
from async_jobs.domain.jobs import JobId
from async_jobs.domain.retry import Backoff
from async_jobs.domain.validation import json_dumps
from async_jobs.domain.webhooks import (
    DEFAULT_WEBHOOK_MAX_ATTEMPTS,
    AllowList,
    AttemptResult,
    DeliveryAttempt,
    DeliveryOutcome,
    WebhookDelivery,
    refused_address,
    url_host,
)
from async_jobs.ports import JobStore

log = logging.getLogger("async_jobs.webhooks")

SIGNATURE_HEADER = "X-AsyncJobs-Signature"
TIMESTAMP_HEADER = "X-AsyncJobs-Timestamp"
DELIVERY_HEADER = "X-AsyncJobs-Delivery"
EVENT_HEADER = "X-AsyncJobs-Event"
SIGNATURE_VERSION = "v1"

Resolver = Callable[[str, int], Awaitable[list[str]]]


# -- signatures -----------------------------------------------------------------------------


def sign(secret: str, timestamp: int | str, body: bytes | str) -> str:
    """``v1=<hex HMAC-SHA256(secret, "<timestamp>.<body>")>``."""
    raw = body.encode() if isinstance(body, str) else body
    message = f"{timestamp}.".encode() + raw
    digest = hmac.new(secret.encode(), message, hashlib.sha256).hexdigest()
    return f"{SIGNATURE_VERSION}={digest}"


def verify_signature(
    secret: str,
    timestamp: str | int,
    body: bytes | str,
    signature: str,
    tolerance_seconds: float = 300,
    *,
    now: float | None = None,
) -> bool:
    """True if ``signature`` (the ``X-AsyncJobs-Signature`` header: one or more
    comma-separated ``v1=<hex>``) signs ``timestamp`` (``X-AsyncJobs-Timestamp``) and the
    raw request ``body`` with ``secret``, and the timestamp is within ``tolerance_seconds``
    of ``now`` (replays of old requests are refused). Compared in constant time."""
    try:
        stamp = int(str(timestamp).strip())
    except ValueError:
        return False
    current = time.time() if now is None else now
    if abs(current - stamp) > tolerance_seconds:
        return False
    expected = sign(secret, stamp, body)
    offered = [part.strip() for part in signature.split(",")]
    return any(hmac.compare_digest(expected, part) for part in offered if part)


# -- the sender -----------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True, slots=True)
class WebhookConfig:
    secret: str | None = None  # signs every tenant's webhooks without its own secret
    secrets: Mapping[str, str] = dataclasses.field(default_factory=dict)  # tenant -> secret
    allow: AllowList = dataclasses.field(default_factory=AllowList)
    max_attempts: int = DEFAULT_WEBHOOK_MAX_ATTEMPTS
    timeout_seconds: float = 10.0
    concurrency: int = 10  # POSTs in flight at once
    backoff: Backoff = dataclasses.field(
        default_factory=lambda: Backoff.exponential(5.0, cap_seconds=3600.0)
    )
    # How long a leased attempt is this sender's alone; longer than any send can take.
    lease_seconds: float | None = None  # None: timeout + 30 s
    sweep_batch: int = 1000
    recent_seconds: float = 600.0  # the cheap sweep looks this far back
    full_sweep_interval_seconds: float = 300.0
    user_agent: str = "async-jobs-webhooks/1"

    def __post_init__(self) -> None:
        if self.concurrency < 1 or self.max_attempts < 1 or not self.timeout_seconds > 0:
            raise ValueError("webhook concurrency, attempts and timeout must be positive")

    @property
    def lease(self) -> float:
        return self.lease_seconds if self.lease_seconds is not None else self.timeout_seconds + 30

    @classmethod
    def from_settings(cls, settings: Settings, **overrides: object) -> WebhookConfig:
        config = cls(
            secret=settings.webhook_secret,
            secrets=dict(settings.webhook_secrets),
            allow=settings.webhook_allow_list(),
            max_attempts=settings.webhook_max_attempts,
            timeout_seconds=settings.webhook_timeout_seconds,
        )
        return dataclasses.replace(config, **overrides)  # type: ignore[arg-type]

    def secret_for(self, tenant_id: str) -> str | None:
        return self.secrets.get(tenant_id) or self.secret


class WebhookSender:
    """Sends due webhook deliveries; a chore of the leading scheduler (``run_once`` every
    round), or run by hand. ``close()`` waits for the sends in flight (up to a grace period,
    then cancels them: their leases run out and the attempts are made again later)."""

    def __init__(
        self,
        store: JobStore,
        config: WebhookConfig | None = None,
        *,
        client: httpx.AsyncClient | None = None,
        resolve: Resolver | None = None,
        clock: Callable[[], float] = time.time,
        metrics: Metrics | None = None,
        tracing: Tracing | None = None,
    ) -> None:
        self._store = store
        self._tracing = tracing or Tracing.off()
        self._metrics = metrics or Metrics.off()
        self.config = config or WebhookConfig()
        self._client = client
        self._own_client = client is None
        self._resolve = resolve or _resolve
        self._clock = clock
        self._in_flight: set[asyncio.Task[None]] = set()
        self._last_full_sweep = float("-inf")
        self.sent = 0  # attempts made and recorded by this sender
        self.lost = 0  # attempts whose record the store refused (lease lost) or missed

    @property
    def in_flight(self) -> int:
        return len(self._in_flight)

    async def run_once(self) -> int:
        """Make the missing deliveries, lease as many due ones as there are free slots and
        start sending them. Returns how many attempts started (they finish in the
        background; ``drain()`` waits for them)."""
        await self.sweep()
        free = self.config.concurrency - len(self._in_flight)
        if free <= 0:
            return 0
        leased = await self._store.lease_webhook_deliveries(free, self.config.lease)
        for delivery in leased:
            task = asyncio.create_task(self._attempt(delivery), name=f"webhook {delivery.id}")
            self._in_flight.add(task)
            task.add_done_callback(self._in_flight.discard)
        return len(leased)

    async def sweep(self) -> int:
        """The outbox: make the deliveries of jobs that ended; returns how many."""
        now = time.monotonic()
        full = now - self._last_full_sweep >= self.config.full_sweep_interval_seconds
        within = None if full else self.config.recent_seconds
        made = 0
        while True:
            count = await self._store.create_webhook_deliveries(
                self.config.sweep_batch, self.config.max_attempts, within
            )
            made += count
            if count < self.config.sweep_batch:
                break
        if full:
            self._last_full_sweep = now
        return made

    async def drain(self) -> None:
        """Wait for every send in flight to end and be recorded."""
        while self._in_flight:
            await asyncio.gather(*list(self._in_flight), return_exceptions=True)

    async def close(self, grace_seconds: float | None = None) -> None:
        grace = self.config.timeout_seconds + 1 if grace_seconds is None else grace_seconds
        if self._in_flight:
            _, pending = await asyncio.wait(list(self._in_flight), timeout=grace)
            for task in pending:
                task.cancel()
            if pending:
                await asyncio.gather(*pending, return_exceptions=True)
        if self._client is not None and self._own_client:
            await self._client.aclose()
            self._client = None

    async def _attempt(self, delivery: WebhookDelivery) -> None:
        try:
            outcome = await self.send(delivery)
            if await self._store.record_webhook_attempt(outcome):
                self.sent += 1
                self._metrics.webhook_delivery(_metric_outcome(delivery, outcome))
            else:
                self.lost += 1
                log.warning(
                    "webhook delivery %s attempt %d: its lease ran out before it was recorded",
                    delivery.id,
                    delivery.attempts,
                )
        except StoreError as exc:  # the lease runs out and the attempt is made again
            self.lost += 1
            log.warning("webhook delivery %s: cannot record attempt: %s", delivery.id, exc)
        except Exception:
            self.lost += 1
            log.exception("webhook delivery %s: attempt failed unexpectedly", delivery.id)

    async def send(self, delivery: WebhookDelivery) -> DeliveryOutcome:
        """Make one leased attempt and say how it ended (nothing is recorded here)."""
        at = datetime.fromtimestamp(self._clock(), UTC)
        started = time.monotonic()

        def outcome(
            result: AttemptResult, status_code: int | None = None, error: str | None = None
        ) -> DeliveryOutcome:
            elapsed = (time.monotonic() - started) * 1000.0
            delay = 0.0
            if result is AttemptResult.RETRY:
                delay = self.config.backoff.delay(delivery.attempts)
            return DeliveryOutcome(
                delivery.id,
                delivery.attempts,
                _token(delivery),
                result,
                DeliveryAttempt(at, status_code, error, elapsed),
                delay,
            )

        job = await self._store.get_job(JobId(delivery.job_id))
        if job is None:
            return outcome(AttemptResult.FAILED, error="the job no longer exists")
        refused = await self._check_target(delivery.url)
        if refused is not None:
            return outcome(refused[0], error=refused[1])
        body = json_dumps(job.to_json()).encode()
        headers = self.headers(delivery, body)
        host = urlsplit(delivery.url).hostname or ""
        with self._tracing.webhook(job, host, delivery.attempts) as span:
            headers.update(self._tracing.headers())
            try:
                response = await self._http().post(delivery.url, content=body, headers=headers)
            except httpx.HTTPError as exc:
                error = f"{type(exc).__name__}: {exc}".strip()
                span.delivered(False, None, type(exc).__name__)
                return outcome(AttemptResult.RETRY, error=error)
            status = response.status_code
            span.delivered(200 <= status < 300, status, f"HTTP {status}")
        if 200 <= status < 300:
            return outcome(AttemptResult.DELIVERED, status)
        return outcome(AttemptResult.RETRY, status, f"HTTP {status}")

    def headers(self, delivery: WebhookDelivery, body: bytes) -> dict[str, str]:
        timestamp = int(self._clock())
        headers = {
            "Content-Type": "application/json",
            "User-Agent": self.config.user_agent,
            DELIVERY_HEADER: str(delivery.id),
            EVENT_HEADER: f"job.{delivery.event}",
            TIMESTAMP_HEADER: str(timestamp),
        }
        secret = self.config.secret_for(delivery.tenant_id)
        if secret:
            headers[SIGNATURE_HEADER] = sign(secret, timestamp, body)
        return headers

    async def _check_target(self, url: str) -> tuple[AttemptResult, str] | None:
        """Why ``url`` may not be sent to now, after DNS resolution, or None: a refused
        address fails the delivery; a name that does not resolve now is retried."""
        host = url_host(url)
        if not host:
            return AttemptResult.FAILED, "the webhook URL has no host"
        allow = self.config.allow
        if allow.allows_host(host):
            return None
        try:
            addresses = [ipaddress.ip_address(host)]
        except ValueError:
            parts = urlsplit(url)
            port = parts.port or (443 if parts.scheme == "https" else 80)
            try:
                resolved = await self._resolve(host, port)
            except OSError as exc:
                return AttemptResult.RETRY, f"cannot resolve {host}: {exc}"
            addresses = [ipaddress.ip_address(a.split("%", 1)[0]) for a in resolved]
        for address in addresses:
            reason = refused_address(address, host, allow)
            if reason is not None:
                return AttemptResult.FAILED, reason
        return None

    def _http(self) -> httpx.AsyncClient:
        if self._client is None:
            self._client = httpx.AsyncClient(
                timeout=self.config.timeout_seconds,
                follow_redirects=False,
                limits=httpx.Limits(max_connections=self.config.concurrency),
            )
        return self._client


def _token(delivery: WebhookDelivery) -> uuid.UUID:
    assert delivery.lease_token is not None, "only leased deliveries are sent"
    return delivery.lease_token


async def _resolve(host: str, port: int) -> list[str]:
    infos = await asyncio.get_running_loop().getaddrinfo(
        host, port, type=socket.SOCK_STREAM, proto=socket.IPPROTO_TCP
    )
    return sorted({str(info[4][0]) for info in infos})


def _metric_outcome(delivery: WebhookDelivery, outcome: DeliveryOutcome) -> str:
    """``delivered``, ``retried``, or ``failed`` (refused, or the last attempt spent)."""
    if outcome.result is AttemptResult.DELIVERED:
        return "delivered"
    if outcome.result is AttemptResult.RETRY and delivery.attempts < delivery.max_attempts:
        return "retried"
    return "failed"
