"""Handler registration, settings from the environment, backoff bounds, cursors, exports."""

from __future__ import annotations

import base64
import types
from datetime import UTC, datetime
from typing import Any

import pytest

import async_jobs
from async_jobs import ConfigurationError, JobApp, JobContext, Settings, job
from async_jobs.api.schemas import decode_cursor, encode_cursor
from async_jobs.core.registry import Registry, default_type_name
from async_jobs.domain.errors import HandlerRegistrationError, InvalidCursorError, InvalidJobError
from async_jobs.domain.jobs import JobId, PageCursor, Priority
from async_jobs.domain.retry import Backoff, BackoffKind
from async_jobs.stores import sqlite_path, store_from_dsn


def test_class_names_become_snake_case_types() -> None:
    class SayHelloJob:
        async def handle(self, ctx: JobContext, payload: dict[str, Any]) -> None: ...

    class HTTPFetch: ...

    assert default_type_name(SayHelloJob) == "say_hello"
    assert default_type_name(HTTPFetch) == "httpfetch"


def test_a_module_registers_only_what_it_marked() -> None:
    module = types.ModuleType("fake_handlers")

    @job("one", use_case="mail", priority="high", max_attempts=7)
    async def one(ctx: JobContext, payload: dict[str, Any]) -> None: ...

    def unmarked(ctx: JobContext, payload: dict[str, Any]) -> None: ...

    one.__module__ = unmarked.__module__ = "fake_handlers"
    module.one = one  # type: ignore[attr-defined]
    module.unmarked = unmarked  # type: ignore[attr-defined]
    registry = Registry()
    registry.add_module(module)
    assert registry.types == ("one",)
    handler = registry.get("one")
    assert handler is not None
    assert (handler.use_case, handler.priority, handler.max_attempts) == (
        "mail",
        Priority.HIGH,
        7,
    )
    registry.add_module(module)  # registering the same module twice is harmless
    assert len(registry) == 1


def test_handlers_must_take_ctx_and_payload() -> None:
    registry = Registry()

    def no_args() -> None: ...

    with pytest.raises(HandlerRegistrationError, match=r"\(ctx, payload\)"):
        registry.add(no_args)

    class NoHandle: ...

    with pytest.raises(HandlerRegistrationError, match="handle"):
        registry.add(NoHandle)


def test_two_handlers_cannot_share_a_type() -> None:
    registry = Registry()

    @job("same")
    def first(ctx: JobContext, payload: dict[str, Any]) -> None: ...

    @job("same")
    def second(ctx: JobContext, payload: dict[str, Any]) -> None: ...

    registry.add(first)
    with pytest.raises(HandlerRegistrationError, match="already registered"):
        registry.add(second)


def test_an_unimportable_handler_module_is_a_configuration_error() -> None:
    with pytest.raises(ConfigurationError, match="no_such_module"):
        JobApp("memory://", handler_modules=["no_such_module"])


def test_settings_from_the_environment() -> None:
    settings = Settings.from_env(
        {
            "ASYNC_JOBS_DB_DSN": "postgresql://u@h/db",
            "ASYNC_JOBS_TRANSPORT": "SQS",
            "ASYNC_JOBS_HANDLERS": "a.b, c ,",
            "ASYNC_JOBS_NOTIFICATIONS_MAX_CONCURRENT": "4",
            "ASYNC_JOBS_MESSAGE_LABELING_DEFAULT_DELAY_TOLERANCE_SECONDS": "30",
            "ASYNC_JOBS_SQS_QUEUE_MESSAGE_LABELING": "http://q/1",
            "ASYNC_JOBS_API_TOKENS": '{"tok": "*"}',
        }
    )
    assert settings.db_dsn == "postgresql://u@h/db"
    assert settings.transport == "sqs"
    assert settings.handlers == ("a.b", "c")
    assert settings.limits().max_concurrent_for("notifications") == 4
    assert settings.limits().max_concurrent_for("other") is None  # no cap unless configured
    # The use case named "default" (the one a job gets when none is given) is no exception.
    capped = Settings.from_env({"ASYNC_JOBS_DEFAULT_MAX_CONCURRENT": "7"}).limits()
    assert (capped.max_concurrent_for("default"), capped.max_concurrent_for("other")) == (7, None)
    assert settings.delay_tolerance_for("message_labeling") == 30
    assert settings.delay_tolerance_for("other") == 300
    assert settings.sqs_queues == {"message_labeling": "http://q/1"}
    assert settings.api_tokens == {"tok": "*"}
    assert Settings.from_env({}).db_dsn == "sqlite:///async_jobs.db"


@pytest.mark.parametrize(
    "env",
    [
        {"ASYNC_JOBS_TRANSPORT": "kafka"},
        {"ASYNC_JOBS_X_MAX_CONCURRENT": "zero"},
        {"ASYNC_JOBS_X_MAX_CONCURRENT": "0"},
        {"ASYNC_JOBS_PER_TENANT_QUOTAS": "{not json"},
        {"ASYNC_JOBS_API_TOKENS": "[1]"},
    ],
)
def test_bad_settings_are_configuration_errors(env: dict[str, str]) -> None:
    with pytest.raises(ConfigurationError):
        Settings.from_env(env)


@pytest.mark.parametrize(
    "dsn", ["mysql://x/y", "nonsense", "postgresql://u@h:notaport/db", "sqlite://", "sqlite:///"]
)
def test_bad_dsns_are_configuration_errors(dsn: str) -> None:
    with pytest.raises(ConfigurationError):
        store_from_dsn(dsn)


def test_sqlite_paths() -> None:
    assert sqlite_path("sqlite:///async_jobs.db") == "async_jobs.db"
    assert sqlite_path("sqlite:////tmp/x.db") == "/tmp/x.db"


def test_backoff_grows_caps_and_jitters_within_bounds() -> None:
    policy = Backoff.exponential(1, factor=2, cap_seconds=10, jitter=0.5)
    assert [policy.delay(n, rand=lambda: 0.0) for n in (1, 2, 3, 4, 5)] == [1, 2, 4, 8, 10]
    assert policy.delay(3, rand=lambda: 1.0) == 2.0
    assert all(2.0 <= policy.delay(3) <= 4.0 for _ in range(100))
    assert policy.bounds(1000) == (5.0, 10.0)  # no overflow at absurd attempt numbers


def test_constant_and_linear_backoff() -> None:
    constant = Backoff.constant(5, jitter=0)
    assert [constant.delay(n) for n in (1, 2, 10)] == [5, 5, 5]
    linear = Backoff.linear(10, cap_seconds=25, jitter=0)
    assert [linear.delay(n) for n in (1, 2, 3, 4)] == [10, 20, 25, 25]
    assert Backoff.constant(4).bounds(3) == pytest.approx((3.6, 4.0))


def test_backoff_round_trips_through_json_and_refuses_nonsense() -> None:
    for policy in (Backoff.constant(2), Backoff.linear(3), Backoff.exponential(0.5, factor=3)):
        assert Backoff.from_json(policy.to_json()) == policy
    assert Backoff.from_json({"kind": "constant", "base_seconds": 7}).bounds(1)[1] == 7
    assert Backoff.from_json({}).kind is BackoffKind.EXPONENTIAL
    for bad in (
        {"kind": "sometimes"},
        {"jitter": 2},
        {"base_seconds": -1},
        {"base_seconds": "1"},
        {"factor": float("nan")},
        {"extra": 1},
        [],
    ):
        with pytest.raises(InvalidJobError):
            Backoff.from_json(bad)  # type: ignore[arg-type]


def test_cursors_round_trip_and_refuse_forgeries() -> None:
    import uuid

    cursor = PageCursor(datetime(2026, 1, 2, 3, 4, 5, 678, tzinfo=UTC), JobId(uuid.uuid4()))
    assert decode_cursor(encode_cursor(cursor)) == cursor
    deep = base64.urlsafe_b64encode(b"[" * 1000).decode()  # deeper than json.loads goes
    for bad in ("zzz", "e30", "bm90IGpzb24", deep, encode_cursor(cursor) + "e30" * 40):
        with pytest.raises(InvalidCursorError):
            decode_cursor(bad)


def test_public_names_are_exported() -> None:
    for name in async_jobs.__all__:
        assert hasattr(async_jobs, name), name
    assert sorted(async_jobs.__all__) == async_jobs.__all__
