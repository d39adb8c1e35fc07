"""The one settings object, read from ``ASYNC_JOBS_*`` environment variables, and the
readers of the numbers that variables and flags give.

Command-line flags override it: a flag that stands for a variable replaces it in the
environment the settings read; the others build a changed copy (``dataclasses.replace``).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import re
import urllib.parse
from collections.abc import Mapping
from typing import Any

from async_jobs.core.logs import logging_options
from async_jobs.domain.errors import ConfigurationError
from async_jobs.domain.jobs import DEFAULT_DELAY_TOLERANCE_SECONDS
from async_jobs.domain.scheduling import (
    Limits,
    RetentionPolicy,
    TenantQuota,
    parse_quotas,
)
from async_jobs.domain.validation import MAX_DELAY_SECONDS
from async_jobs.domain.webhooks import DEFAULT_WEBHOOK_MAX_ATTEMPTS, AllowList

PREFIX = "ASYNC_JOBS_"
DEFAULT_DSN = "sqlite:///async_jobs.db"
DEFAULT_DISPATCH_WINDOW = 1000  # see Settings.dispatch_window
TRANSPORTS = ("direct", "sqs", "redis")
# Every duration a variable or a flag gives is at most this (about 31 years): past it a value
# is a typo, and timestamps computed from it would overflow in the stores.
MAX_SECONDS = 1e9
# A claim's lease is renewed every third of it; under a second, a database round trip late
# by a few hundred milliseconds would let the reaper fail jobs that are running fine.
MIN_LEASE_SECONDS = 1.0

_PER_USE_CASE = re.compile(
    rf"^{PREFIX}(?P<use_case>[A-Z0-9_]+?)_(?P<kind>MAX_CONCURRENT|DEFAULT_DELAY_TOLERANCE_SECONDS)$"
)
_SQS_QUEUE = re.compile(rf"^{PREFIX}SQS_QUEUE_(?P<use_case>[A-Z0-9_]+)$")

# Every environment variable the package reads (``<USE_CASE>``: any use case's name in
# capitals). The README's configuration table lists exactly these, and a test checks both
# against the code: a new variable is added here and to that table.
ENVIRONMENT_VARIABLES: tuple[str, ...] = (
    f"{PREFIX}DB_DSN",
    f"{PREFIX}HANDLERS",
    f"{PREFIX}TRANSPORT",
    f"{PREFIX}SQS_QUEUE_<USE_CASE>",
    f"{PREFIX}SQS_ENDPOINT_URL",
    f"{PREFIX}SQS_DISPATCH_TIMEOUT_SECONDS",
    f"{PREFIX}SQS_VISIBILITY_TIMEOUT_SECONDS",
    f"{PREFIX}SQS_MAX_CONNECTIONS",
    f"{PREFIX}SQS_LONG_POLL_SECONDS",
    f"{PREFIX}REDIS_URL",
    f"{PREFIX}REDIS_PREFIX",
    f"{PREFIX}REDIS_USE_CASES",
    f"{PREFIX}REDIS_DISPATCH_TIMEOUT_SECONDS",
    f"{PREFIX}<USE_CASE>_DEFAULT_DELAY_TOLERANCE_SECONDS",
    f"{PREFIX}<USE_CASE>_MAX_CONCURRENT",
    f"{PREFIX}PER_TENANT_QUOTAS",
    f"{PREFIX}RETAIN_SUCCEEDED_HOURS",
    f"{PREFIX}RETAIN_CANCELLED_HOURS",
    f"{PREFIX}RETAIN_FAILED_HOURS",
    f"{PREFIX}ENQUEUE_AUTH_TOKEN",
    f"{PREFIX}API_TOKENS",
    f"{PREFIX}PERIODIC_JOBS",
    f"{PREFIX}SCHEDULER_INTERVAL_SECONDS",
    f"{PREFIX}LEADER_LEASE_SECONDS",
    f"{PREFIX}LEASE_SECONDS",
    f"{PREFIX}WEBHOOK_SECRET",
    f"{PREFIX}WEBHOOK_SECRETS",
    f"{PREFIX}WEBHOOK_ALLOWED_HOSTS",
    f"{PREFIX}WEBHOOK_MAX_ATTEMPTS",
    f"{PREFIX}WEBHOOK_TIMEOUT_SECONDS",
    f"{PREFIX}POLL_INTERVAL_SECONDS",
    f"{PREFIX}MAX_RESULT_BYTES",
    f"{PREFIX}MAX_ERROR_CHARS",
    f"{PREFIX}WORKER_CONCURRENCY",
    f"{PREFIX}WORKER_USE_CASES",
    f"{PREFIX}WORKER_GRACE_SECONDS",
    f"{PREFIX}WORKER_PROCESSES",
    f"{PREFIX}API_HOST",
    f"{PREFIX}API_PORT",
    f"{PREFIX}API_PREFIX",
    f"{PREFIX}CORS_ORIGINS",
    f"{PREFIX}STORE_WAIT_SECONDS",
    f"{PREFIX}LOG_FORMAT",
    f"{PREFIX}LOG_LEVEL",
    f"{PREFIX}METRICS_PORT",
    f"{PREFIX}METRICS_HOST",
    f"{PREFIX}METRICS_TENANT_LABEL",
    f"{PREFIX}METRICS_TENANT_CAP",
    f"{PREFIX}DISPATCH_WINDOW",
)


@dataclasses.dataclass(frozen=True, slots=True)
class Settings:
    """Everything configurable, with the defaults a newcomer needs nothing for."""

    db_dsn: str = DEFAULT_DSN
    transport: str = "direct"
    handlers: tuple[str, ...] = ()
    redis_url: str | None = None
    sqs_endpoint_url: str | None = None
    sqs_queues: Mapping[str, str] = dataclasses.field(default_factory=dict)
    # AWS_REGION (or AWS_DEFAULT_REGION) as boto reads it; credentials are boto's business.
    sqs_region: str = "us-east-1"
    # A job dispatched to SQS that no worker claimed within this long is sent again.
    sqs_dispatch_timeout_seconds: float = 60.0
    sqs_max_connections: int = 50
    sqs_long_poll_seconds: int = 10  # 0-20; a stopping worker lets its polls end first
    sqs_visibility_timeout_seconds: int | None = None  # None: each queue's own
    max_concurrent: Mapping[str, int] = dataclasses.field(default_factory=dict)
    delay_tolerance: Mapping[str, float] = dataclasses.field(default_factory=dict)
    per_tenant_quotas: Mapping[str, Mapping[str, TenantQuota]] = dataclasses.field(
        default_factory=dict
    )
    enqueue_auth_token: str | None = None
    api_tokens: Mapping[str, Any] = dataclasses.field(default_factory=dict)  # see api.auth
    lease_seconds: float = 30.0
    poll_interval_seconds: float = 1.0
    max_result_bytes: int = 1024 * 1024
    max_error_chars: int = 4000
    retention: RetentionPolicy = dataclasses.field(default_factory=RetentionPolicy)
    scheduler_interval_seconds: float = 1.0
    leader_lease_seconds: float = 5.0
    # Periodic jobs declared in configuration: {"cron", "type", optional "name", "payload"
    # and enqueue options}, from the JSON list ASYNC_JOBS_PERIODIC_JOBS.
    periodic_jobs: tuple[Mapping[str, Any], ...] = ()
    # Webhooks: the signing secret (global, and per tenant), the hosts, IPs and CIDRs a
    # webhook may target although they are private, loopback, link-local, multicast or
    # reserved, the attempts per delivery and each attempt's timeout.
    webhook_secret: str | None = None
    webhook_secrets: Mapping[str, str] = dataclasses.field(default_factory=dict)
    webhook_allowed_hosts: tuple[str, ...] = ()
    webhook_max_attempts: int = DEFAULT_WEBHOOK_MAX_ATTEMPTS
    webhook_timeout_seconds: float = 10.0
    # Worker processes one ``async-jobs worker`` runs (its --processes).
    worker_processes: int = 1
    # The worker's and the API's flags, for platforms configured by environment.
    worker_concurrency: int = 10
    worker_use_cases: tuple[str, ...] = ()
    worker_grace_seconds: float = 30.0
    api_host: str = "127.0.0.1"
    api_port: int = 8000
    api_prefix: str = ""  # e.g. "/api/v1": every route of the standalone API moves under it
    cors_origins: tuple[str, ...] = ()
    # How long a starting process retries a store that does not answer before it gives up.
    store_wait_seconds: float = 30.0
    # The redis transport: key prefix, the use cases it carries (a stream each), and how
    # long a dispatched job may wait unclaimed before it is dispatched again.
    redis_prefix: str = "async-jobs"
    redis_use_cases: tuple[str, ...] = ("default",)
    redis_dispatch_timeout_seconds: float = 60.0
    # Broker transports (sqs, redis): the most jobs of one use case dispatched but not yet
    # claimed at once (running jobs do not count). 1000 keeps workers fed between dispatch
    # rounds (a round per second and per batch of finished jobs) up to about 1000 jobs/s per
    # use case, while workers draining as little as 17 jobs/s still claim the whole window
    # within the 60 s dispatch timeout: a backlog waits in the store, not in the broker.
    dispatch_window: int = DEFAULT_DISPATCH_WINDOW
    # Logs of every command (flags override), and a worker's or scheduler's own port for
    # /metrics and the health probes (None: off), with the metrics' tenant label.
    log_format: str = "text"
    log_level: str = "INFO"
    metrics_port: int | None = None
    metrics_host: str = "0.0.0.0"
    metrics_tenant_label: bool = False
    metrics_tenant_cap: int = 100

    def __post_init__(self) -> None:
        if self.transport not in TRANSPORTS:
            raise ConfigurationError(
                f"{PREFIX}TRANSPORT must be one of {', '.join(TRANSPORTS)}, not {self.transport!r}"
            )
        self._check_durations()
        try:
            AllowList.parse(self.webhook_allowed_hosts)
        except ValueError as exc:
            raise ConfigurationError(f"{PREFIX}WEBHOOK_ALLOWED_HOSTS: {exc}") from exc
        if not all(isinstance(v, str) and v for v in self.webhook_secrets.values()):
            raise ConfigurationError(
                f"{PREFIX}WEBHOOK_SECRETS must map tenants to non-empty secret strings"
            )
        if self.dispatch_window < 1:
            raise ConfigurationError(f"{PREFIX}DISPATCH_WINDOW must be a positive integer")
        if self.webhook_max_attempts < 1 or not self.webhook_timeout_seconds > 0:
            raise ConfigurationError("webhook attempts and timeout must be positive numbers")
        if self.api_prefix and (
            not self.api_prefix.startswith("/") or self.api_prefix.endswith("/")
        ):
            raise ConfigurationError(
                f"{PREFIX}API_PREFIX must start with / and not end with one (e.g. /api/v1), "
                f"not {self.api_prefix!r}"
            )

    def _check_durations(self) -> None:
        """Every duration finite and within its bounds, and those that depend on each other
        in order, each named by its variable (also for settings made in code)."""
        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            if field.name.endswith("_seconds") and value is not None:
                _check_number(f"{PREFIX}{field.name.upper()}", value, 0.0, MAX_SECONDS)
        for use_case, tolerance in self.delay_tolerance.items():
            _check_number(
                f"{PREFIX}{use_case.upper()}_DEFAULT_DELAY_TOLERANCE_SECONDS",
                tolerance,
                0.0,
                MAX_DELAY_SECONDS,
            )
        _check_number(f"{PREFIX}LEASE_SECONDS", self.lease_seconds, MIN_LEASE_SECONDS, MAX_SECONDS)
        for name in ("POLL_INTERVAL_SECONDS", "SCHEDULER_INTERVAL_SECONDS"):
            if not getattr(self, name.lower()) > 0:
                raise ConfigurationError(f"{PREFIX}{name} must be more than 0")
        if not self.leader_lease_seconds > self.scheduler_interval_seconds:
            # A leader renews its lease once a round: a lease no longer than a round runs
            # out between two renewals, and the chores would change hands every round.
            raise ConfigurationError(
                f"{PREFIX}LEADER_LEASE_SECONDS ({self.leader_lease_seconds:g}) must be longer "
                f"than {PREFIX}SCHEDULER_INTERVAL_SECONDS ({self.scheduler_interval_seconds:g}), "
                "the round in which a leader renews it"
            )

    def webhook_allow_list(self) -> AllowList:
        return AllowList.parse(self.webhook_allowed_hosts)

    def webhook_secret_for(self, tenant_id: str) -> str | None:
        """The tenant's own secret, else the global one; None: webhooks go unsigned."""
        return self.webhook_secrets.get(tenant_id) or self.webhook_secret

    def limits(self) -> Limits:
        """Per-use-case concurrency and tenant quotas, as claims and enqueues take them."""
        return Limits(max_concurrent=dict(self.max_concurrent), quotas=self.per_tenant_quotas)

    def delay_tolerance_for(self, use_case: str) -> float:
        return self.delay_tolerance.get(use_case, DEFAULT_DELAY_TOLERANCE_SECONDS)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        env = os.environ if environ is None else environ
        max_concurrent: dict[str, int] = {}
        tolerance: dict[str, float] = {}
        queues: dict[str, str] = {}
        for key, value in env.items():
            if match := _SQS_QUEUE.match(key):
                queues[match["use_case"].lower()] = value
            elif match := _PER_USE_CASE.match(key):
                use_case = match["use_case"].lower()
                if match["kind"] == "MAX_CONCURRENT":
                    max_concurrent[use_case] = _positive_int(key, value)
                else:
                    tolerance[use_case] = _non_negative_float(key, value, MAX_DELAY_SECONDS)
        log_format, log_level = logging_options(None, None, env)
        return cls(
            db_dsn=env.get(f"{PREFIX}DB_DSN") or DEFAULT_DSN,
            transport=(env.get(f"{PREFIX}TRANSPORT") or "direct").lower(),
            handlers=split_modules(env.get(f"{PREFIX}HANDLERS", "")),
            redis_url=env.get(f"{PREFIX}REDIS_URL") or None,
            sqs_endpoint_url=env.get(f"{PREFIX}SQS_ENDPOINT_URL") or None,
            sqs_queues=queues,
            sqs_region=env.get("AWS_REGION") or env.get("AWS_DEFAULT_REGION") or "us-east-1",
            sqs_dispatch_timeout_seconds=_non_negative_float(
                f"{PREFIX}SQS_DISPATCH_TIMEOUT_SECONDS",
                env.get(f"{PREFIX}SQS_DISPATCH_TIMEOUT_SECONDS", "60"),
            ),
            sqs_max_connections=_positive_int(
                f"{PREFIX}SQS_MAX_CONNECTIONS", env.get(f"{PREFIX}SQS_MAX_CONNECTIONS", "50")
            ),
            sqs_long_poll_seconds=_int_within(
                f"{PREFIX}SQS_LONG_POLL_SECONDS",
                env.get(f"{PREFIX}SQS_LONG_POLL_SECONDS", "10"),
                0,
                20,
            ),
            sqs_visibility_timeout_seconds=(
                _positive_int(key, env[key])
                if (key := f"{PREFIX}SQS_VISIBILITY_TIMEOUT_SECONDS") in env
                else None
            ),
            max_concurrent=max_concurrent,
            delay_tolerance=tolerance,
            per_tenant_quotas=parse_quotas(
                _json_object(env, f"{PREFIX}PER_TENANT_QUOTAS"), f"{PREFIX}PER_TENANT_QUOTAS"
            ),
            enqueue_auth_token=env.get(f"{PREFIX}ENQUEUE_AUTH_TOKEN") or None,
            api_tokens=_json_object(env, f"{PREFIX}API_TOKENS"),
            lease_seconds=_non_negative_float(
                f"{PREFIX}LEASE_SECONDS", env.get(f"{PREFIX}LEASE_SECONDS", "30")
            ),
            poll_interval_seconds=_non_negative_float(
                f"{PREFIX}POLL_INTERVAL_SECONDS", env.get(f"{PREFIX}POLL_INTERVAL_SECONDS", "1")
            ),
            max_result_bytes=_positive_int(
                f"{PREFIX}MAX_RESULT_BYTES", env.get(f"{PREFIX}MAX_RESULT_BYTES", "1048576")
            ),
            max_error_chars=_positive_int(
                f"{PREFIX}MAX_ERROR_CHARS", env.get(f"{PREFIX}MAX_ERROR_CHARS", "4000")
            ),
            retention=RetentionPolicy(
                *(
                    _retention_seconds(env, f"{PREFIX}RETAIN_{state}_HOURS", default)
                    for state, default in (("SUCCEEDED", 24), ("CANCELLED", 24), ("FAILED", 168))
                )
            ),
            scheduler_interval_seconds=_non_negative_float(
                f"{PREFIX}SCHEDULER_INTERVAL_SECONDS",
                env.get(f"{PREFIX}SCHEDULER_INTERVAL_SECONDS", "1"),
            ),
            leader_lease_seconds=_non_negative_float(
                f"{PREFIX}LEADER_LEASE_SECONDS", env.get(f"{PREFIX}LEADER_LEASE_SECONDS", "5")
            ),
            periodic_jobs=_periodic_jobs(env, f"{PREFIX}PERIODIC_JOBS"),
            webhook_secret=env.get(f"{PREFIX}WEBHOOK_SECRET") or None,
            webhook_secrets=_json_object(env, f"{PREFIX}WEBHOOK_SECRETS"),
            webhook_allowed_hosts=split_modules(env.get(f"{PREFIX}WEBHOOK_ALLOWED_HOSTS", "")),
            webhook_max_attempts=_positive_int(
                f"{PREFIX}WEBHOOK_MAX_ATTEMPTS", env.get(f"{PREFIX}WEBHOOK_MAX_ATTEMPTS", "8")
            ),
            webhook_timeout_seconds=_non_negative_float(
                f"{PREFIX}WEBHOOK_TIMEOUT_SECONDS",
                env.get(f"{PREFIX}WEBHOOK_TIMEOUT_SECONDS", "10"),
            ),
            worker_processes=_positive_int(
                f"{PREFIX}WORKER_PROCESSES", env.get(f"{PREFIX}WORKER_PROCESSES", "1")
            ),
            worker_concurrency=_positive_int(
                f"{PREFIX}WORKER_CONCURRENCY", env.get(f"{PREFIX}WORKER_CONCURRENCY", "10")
            ),
            worker_use_cases=split_modules(env.get(f"{PREFIX}WORKER_USE_CASES", "")),
            worker_grace_seconds=_non_negative_float(
                f"{PREFIX}WORKER_GRACE_SECONDS", env.get(f"{PREFIX}WORKER_GRACE_SECONDS", "30")
            ),
            api_host=env.get(f"{PREFIX}API_HOST") or "127.0.0.1",
            api_port=_int_within(
                f"{PREFIX}API_PORT", env.get(f"{PREFIX}API_PORT", "8000"), 1, 65535
            ),
            api_prefix=env.get(f"{PREFIX}API_PREFIX", "").strip().rstrip("/"),
            cors_origins=split_modules(env.get(f"{PREFIX}CORS_ORIGINS", "")),
            store_wait_seconds=_non_negative_float(
                f"{PREFIX}STORE_WAIT_SECONDS", env.get(f"{PREFIX}STORE_WAIT_SECONDS", "30")
            ),
            redis_prefix=env.get(f"{PREFIX}REDIS_PREFIX") or "async-jobs",
            redis_use_cases=split_modules(env.get(f"{PREFIX}REDIS_USE_CASES", "default")),
            redis_dispatch_timeout_seconds=_non_negative_float(
                f"{PREFIX}REDIS_DISPATCH_TIMEOUT_SECONDS",
                env.get(f"{PREFIX}REDIS_DISPATCH_TIMEOUT_SECONDS", "60"),
            ),
            dispatch_window=_positive_int(
                f"{PREFIX}DISPATCH_WINDOW",
                env.get(f"{PREFIX}DISPATCH_WINDOW", str(DEFAULT_DISPATCH_WINDOW)),
            ),
            log_format=log_format,
            log_level=log_level,
            metrics_port=_metrics_port(env.get(f"{PREFIX}METRICS_PORT", "")),
            metrics_host=env.get(f"{PREFIX}METRICS_HOST") or "0.0.0.0",
            metrics_tenant_label=_flag(
                f"{PREFIX}METRICS_TENANT_LABEL", env.get(f"{PREFIX}METRICS_TENANT_LABEL", "")
            ),
            metrics_tenant_cap=_positive_int(
                f"{PREFIX}METRICS_TENANT_CAP", env.get(f"{PREFIX}METRICS_TENANT_CAP", "100")
            ),
        )

    def to_public_json(self) -> dict[str, Any]:
        """The effective settings as JSON, every secret masked: tokens, webhook secrets and
        the passwords of the DSN and the Redis URL (what ``async-jobs config`` prints)."""
        shown: dict[str, Any] = {}
        for field in dataclasses.fields(self):
            shown[field.name] = _jsonable(getattr(self, field.name))
        shown["db_dsn"] = mask_url(self.db_dsn)
        shown["redis_url"] = None if self.redis_url is None else mask_url(self.redis_url)
        shown["enqueue_auth_token"] = _masked(self.enqueue_auth_token)
        shown["webhook_secret"] = _masked(self.webhook_secret)
        shown["webhook_secrets"] = {tenant: MASK for tenant in self.webhook_secrets}
        shown["api_tokens"] = [
            {"token": MASK, "acts_for": acts_for} for acts_for in self.api_tokens.values()
        ]
        return shown


MASK = "****"


# Query parameters that carry a secret: libpq's password and sslpassword, and what redis,
# AMQP and other clients' URLs name so (a name containing one of these, in any case).
_SECRET_PARAMETERS = ("pass", "pwd", "secret", "token")


def mask_url(url: str) -> str:
    """A URL with its password (if any) replaced by ``****``, in the user part and in the
    query string: ``postgresql://app:s3cret@db/jobs`` -> ``postgresql://app:****@db/jobs``,
    ``postgresql://app@db/jobs?password=s3cret`` -> ``...?password=****``."""
    url = mask_url_query(url)
    try:
        parts = urllib.parse.urlsplit(url)
        password = parts.password
    except ValueError:  # not a URL we can read: show none of it
        return MASK
    if password is None:
        return url
    user = parts.username or ""
    host = parts.netloc.rpartition("@")[2]
    return urllib.parse.urlunsplit(parts._replace(netloc=f"{user}:{MASK}@{host}"))


def mask_url_query(url: str) -> str:
    """The URL with the value of each password-like parameter of its query string replaced
    by ``****``; everything else as it was written."""
    head, hash_mark, fragment = url.partition("#")
    base, question_mark, query = head.partition("?")
    shown = []
    for pair in query.split("&") if query else ():
        name, equals, _ = pair.partition("=")
        secret = any(word in urllib.parse.unquote_plus(name).lower() for word in _SECRET_PARAMETERS)
        shown.append(f"{name}={MASK}" if equals and secret else pair)
    return f"{base}{question_mark}{'&'.join(shown)}{hash_mark}{fragment}"


def _masked(secret: str | None) -> str | None:
    return None if secret is None else MASK


def _jsonable(value: Any) -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: _jsonable(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, tuple | list):
        return [_jsonable(v) for v in value]
    return value


def split_modules(text: str) -> tuple[str, ...]:
    """``"a.b, c"`` -> ``("a.b", "c")``."""
    return tuple(part.strip() for part in text.split(",") if part.strip())


def _positive_int(key: str, value: str) -> int:
    try:
        number = int(value)
    except ValueError:
        number = 0
    if number < 1:
        raise ConfigurationError(f"{key} must be a positive integer, not {value!r}")
    return number


def _int_within(key: str, value: str, low: int, high: int) -> int:
    try:
        return _whole_number(value, low, high)
    except ValueError as exc:
        raise ConfigurationError(f"{key} {exc}") from None


def parse_number(text: str, high: float = MAX_SECONDS) -> float:
    """``text`` as a finite number from 0 to ``high`` (seconds, mostly), else ``ValueError``
    saying what it must be. Every float variable and flag is read by it: ``float()`` takes
    ``nan`` and ``inf``, which pass or fail every comparison alike and stopped a worker in
    the middle of its shutdown."""
    try:
        number = float(text)
    except ValueError:
        number = math.nan
    if not (math.isfinite(number) and 0 <= number <= high):
        raise ValueError(f"must be a non-negative number up to {high:.10g}, not {text!r}")
    return number


def _check_number(key: str, value: float, low: float, high: float) -> None:
    if not (isinstance(value, int | float) and math.isfinite(value) and low <= value <= high):
        raise ConfigurationError(
            f"{key} must be a number from {low:.10g} to {high:.10g}, not {value!r}"
        )


def _non_negative_float(key: str, value: str, high: float = MAX_SECONDS) -> float:
    try:
        return parse_number(value, high)
    except ValueError as exc:
        raise ConfigurationError(f"{key} {exc}") from None


def duration_flag(text: str) -> float:
    """An argparse ``type`` for a duration (in seconds, or the unit its flag names): as
    ``parse_number`` reads it, so that a bad value stops the command before it does
    anything, naming the flag."""
    try:
        return parse_number(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def port_flag(text: str) -> int:
    """An argparse ``type`` for a port to listen on: 1 to 65535."""
    return _whole_number_flag(text, 1, 65535)


def metrics_port_flag(text: str) -> int:
    """An argparse ``type`` for ``--metrics-port``: 0 (any free port) to 65535."""
    return _whole_number_flag(text, 0, 65535)


def _whole_number_flag(text: str, low: int, high: int) -> int:
    try:
        return _whole_number(text, low, high)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _whole_number(text: str, low: int, high: int) -> int:
    try:
        number = int(text)
    except ValueError:
        number = low - 1
    if not low <= number <= high:
        raise ValueError(f"must be a whole number from {low} to {high}, not {text!r}")
    return number


def _retention_seconds(env: Mapping[str, str], key: str, default_hours: float) -> float | None:
    """Hours as seconds; ``off`` keeps such jobs for ever."""
    raw = env.get(key, "").strip().lower()
    if raw == "off":
        return None
    return _non_negative_float(key, raw or str(default_hours), MAX_SECONDS // 3600) * 3600.0


def _periodic_jobs(env: Mapping[str, str], key: str) -> tuple[Mapping[str, Any], ...]:
    raw = env.get(key)
    if not raw:
        return ()
    try:
        value = json.loads(raw)
    except ValueError as exc:
        raise ConfigurationError(f"{key} is not valid JSON: {exc}") from exc
    if not isinstance(value, list) or not all(
        isinstance(entry, dict) and isinstance(entry.get("cron"), str) and entry.get("type")
        for entry in value
    ):
        raise ConfigurationError(
            f'{key} must be a JSON list of objects with "cron" and "type" (and optional "name", '
            '"payload" and enqueue options)'
        )
    return tuple(value)


def _json_object(env: Mapping[str, str], key: str) -> dict[str, Any]:
    raw = env.get(key)
    if not raw:
        return {}
    try:
        value = json.loads(raw)
    except ValueError as exc:
        raise ConfigurationError(f"{key} is not valid JSON: {exc}") from exc
    if not isinstance(value, dict):
        raise ConfigurationError(f"{key} must be a JSON object")
    return value


def _metrics_port(text: str) -> int | None:
    if not text.strip():
        return None
    return _int_within(f"{PREFIX}METRICS_PORT", text, 0, 65535)


def _flag(key: str, value: str) -> bool:
    text = value.strip().lower()
    if text in ("true", "1", "yes"):
        return True
    if text in ("", "false", "0", "no"):
        return False
    raise ConfigurationError(f"{key} must be true or false, not {value!r}")
