"""Webhook deliveries: the values stores keep and the sender moves, and the rules on targets.

A job with a ``webhook_url`` gets one delivery per terminal transition (keyed by the job and
its ``finished_at``, so a job retried by hand that ends again gets a new one). A delivery is
``pending`` until a POST is answered 2xx (``delivered``) or its attempts are spent or its
target is refused (``failed``). Every attempt is recorded. Nothing here does I/O.
"""

from __future__ import annotations

import dataclasses
import enum
import ipaddress
import uuid
from collections.abc import Iterable, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any, NewType
from urllib.parse import urlsplit

from async_jobs.domain.errors import InvalidJobError

DeliveryId = NewType("DeliveryId", uuid.UUID)

DEFAULT_WEBHOOK_MAX_ATTEMPTS = 8
MAX_DELIVERY_LOG = 50  # attempts kept per delivery (the latest ones)
MAX_ATTEMPT_ERROR_CHARS = 500

IpNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
IpAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


class DeliveryStatus(enum.StrEnum):
    PENDING = "pending"  # waiting for its next attempt (or being sent under a lease)
    DELIVERED = "delivered"  # a 2xx answer
    FAILED = "failed"  # attempts spent, or the target was refused


class AttemptResult(enum.StrEnum):
    """What the sender records at the end of one attempt."""

    DELIVERED = "delivered"
    RETRY = "retry"  # pending again, due after a delay (failed instead if attempts are spent)
    FAILED = "failed"  # failed now, no retry (a refused target)


@dataclasses.dataclass(frozen=True, slots=True)
class DeliveryAttempt:
    """One attempt: when it started, the HTTP status code or the error, how long it took."""

    at: datetime
    status_code: int | None
    error: str | None
    duration_ms: float

    def to_json(self) -> dict[str, Any]:
        return {
            "at": self.at.isoformat(),
            "status_code": self.status_code,
            "error": self.error,
            "duration_ms": self.duration_ms,
        }

    def to_stored(self) -> dict[str, Any]:
        """The form every store keeps: the time as unix epoch seconds."""
        return {
            "at": self.at.timestamp(),
            "status_code": self.status_code,
            "error": None if self.error is None else self.error[:MAX_ATTEMPT_ERROR_CHARS],
            "duration_ms": round(self.duration_ms, 3),
        }

    @classmethod
    def from_stored(cls, data: Mapping[str, Any]) -> DeliveryAttempt:
        code = data.get("status_code")
        return cls(
            at=datetime.fromtimestamp(float(data["at"]), UTC),
            status_code=None if code is None else int(code),
            error=data.get("error"),
            duration_ms=float(data.get("duration_ms") or 0.0),
        )

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> DeliveryAttempt:
        code = data.get("status_code")
        return cls(
            at=datetime.fromisoformat(str(data["at"])),
            status_code=None if code is None else int(code),
            error=data.get("error"),
            duration_ms=float(data.get("duration_ms") or 0.0),
        )


@dataclasses.dataclass(frozen=True, slots=True)
class WebhookDelivery:
    """One delivery of one terminal transition of a job. ``event`` is the state the job
    ended in (``succeeded``, ``failed``, ``cancelled``); ``lease_token`` is set while a
    sender holds the current attempt (number ``attempts``)."""

    id: DeliveryId
    job_id: uuid.UUID
    tenant_id: str
    url: str
    event: str
    job_finished_at: datetime
    status: DeliveryStatus
    attempts: int
    max_attempts: int
    next_attempt_at: datetime
    created_at: datetime
    lease_token: uuid.UUID | None = None
    log: tuple[DeliveryAttempt, ...] = ()

    def to_json(self) -> dict[str, Any]:
        return {
            "id": str(self.id),
            "event": f"job.{self.event}",
            "status": self.status.value,
            "attempts": [a.to_json() for a in self.log],
            "next_attempt_at": self.next_attempt_at.isoformat()
            if self.status is DeliveryStatus.PENDING
            else None,
        }


@dataclasses.dataclass(frozen=True, slots=True)
class DeliveryOutcome:
    """The end of one attempt, fenced by the attempt number and lease token of the lease."""

    delivery_id: DeliveryId
    attempt: int
    lease_token: uuid.UUID
    result: AttemptResult
    record: DeliveryAttempt
    retry_delay_seconds: float = 0.0


@dataclasses.dataclass(frozen=True, slots=True)
class WebhookState:
    """What ``GET /jobs/{id}`` shows of a job's webhook: the latest delivery's status (None
    until the job has ended and its delivery is made), every attempt counted, every
    delivery, oldest first."""

    status: str | None
    attempts: int
    deliveries: tuple[WebhookDelivery, ...]

    @classmethod
    def of(cls, deliveries: Sequence[WebhookDelivery]) -> WebhookState:
        ordered = tuple(sorted(deliveries, key=lambda d: (d.job_finished_at, d.created_at)))
        return cls(
            status=ordered[-1].status.value if ordered else None,
            attempts=sum(len(d.log) for d in ordered),
            deliveries=ordered,
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "status": self.status,
            "attempts": self.attempts,
            "deliveries": [d.to_json() for d in self.deliveries],
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> WebhookState:
        """As ``to_json`` writes it (the client's view: deliveries without their job)."""
        deliveries = tuple(
            WebhookDelivery(
                id=DeliveryId(uuid.UUID(str(d["id"]))),
                job_id=uuid.UUID(int=0),
                tenant_id="",
                url="",
                event=str(d.get("event", "")).removeprefix("job."),
                job_finished_at=datetime.min.replace(tzinfo=UTC),
                status=DeliveryStatus(d["status"]),
                attempts=len(d.get("attempts") or ()),
                max_attempts=0,
                next_attempt_at=datetime.min.replace(tzinfo=UTC),
                created_at=datetime.min.replace(tzinfo=UTC),
                log=tuple(DeliveryAttempt.from_json(a) for a in d.get("attempts") or ()),
            )
            for d in data.get("deliveries") or ()
        )
        return cls(data.get("status"), int(data.get("attempts") or 0), deliveries)


# -- targets --------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True, slots=True)
class AllowList:
    """Hosts and networks a webhook may target even though they are private, loopback,
    link-local, multicast or reserved (``ASYNC_JOBS_WEBHOOK_ALLOWED_HOSTS``)."""

    hosts: frozenset[str] = frozenset()
    networks: tuple[IpNetwork, ...] = ()

    @classmethod
    def parse(cls, entries: Iterable[str]) -> AllowList:
        """Host names, IP addresses or CIDRs; a bad CIDR is a ``ValueError``."""
        hosts: set[str] = set()
        networks: list[IpNetwork] = []
        for raw in entries:
            entry = raw.strip().lower().strip("[]")
            if not entry:
                continue
            try:
                networks.append(ipaddress.ip_network(entry, strict=False))
            except ValueError:
                if "/" in entry:
                    raise ValueError(f"{raw!r} is neither a host name nor a network") from None
                hosts.add(entry.rstrip("."))
        return cls(frozenset(hosts), tuple(networks))

    def allows_host(self, host: str) -> bool:
        return host.lower().rstrip(".") in self.hosts

    def allows_address(self, address: IpAddress) -> bool:
        return any(
            address in network for network in self.networks if network.version == address.version
        )


def is_public_address(address: IpAddress) -> bool:
    """False for private, loopback, link-local, multicast, reserved and unspecified
    addresses (and IPv4 mapped into IPv6 is judged as the IPv4 address)."""
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return not (
        address.is_private
        or address.is_loopback
        or address.is_link_local
        or address.is_multicast
        or address.is_reserved
        or address.is_unspecified
        or not address.is_global
    )


def url_host(url: str) -> str:
    """The host of a URL, lower case, without brackets or a trailing dot ('' if none)."""
    try:
        host = urlsplit(url).hostname
    except ValueError:
        return ""
    return (host or "").lower().rstrip(".")


def refused_address(address: IpAddress, host: str, allow: AllowList) -> str | None:
    """Why a webhook may not go to ``address`` (resolved from ``host``), or None."""
    if is_public_address(address) or allow.allows_host(host) or allow.allows_address(address):
        return None
    return (
        f"webhook target {host} resolves to {address}, a private, loopback, link-local, "
        "multicast or reserved address; allow it with ASYNC_JOBS_WEBHOOK_ALLOWED_HOSTS"
    )


def check_webhook_target(url: str, allow: AllowList) -> None:
    """At enqueue: refuse a literal IP address or ``localhost`` that is not public, unless
    allow-listed (``InvalidJobError`` on ``webhook_url``). Names are checked again after DNS
    resolution, when the webhook is sent."""
    host = url_host(url)
    if not host:
        raise InvalidJobError("webhook_url has no host", field="webhook_url")
    if allow.allows_host(host):
        return
    if host == "localhost" or host.endswith(".localhost"):
        raise InvalidJobError(
            f"webhook_url targets {host}, a loopback host; allow it with "
            "ASYNC_JOBS_WEBHOOK_ALLOWED_HOSTS",
            field="webhook_url",
        )
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return  # a name: checked after resolution, at send time
    reason = refused_address(address, host, allow)
    if reason is not None:
        raise InvalidJobError(reason, field="webhook_url")
