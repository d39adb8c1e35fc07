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
from async_jobs.cli import build_parser
from async_jobs.core.registry import Registry, default_type_name
from async_jobs.domain.errors import HandlerRegistrationError, InvalidCursorError, InvalidJobError
from async_jobs.domain.jobs import JobId, PageCursor, Priority
from async_jobs.domain.retry import Backoff, BackoffKind
from async_jobs.domain.validation import MAX_DELAY_SECONDS
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


# Every variable read as a number of seconds (or hours), by the one function that reads them.
DURATION_VARIABLES = [
    "ASYNC_JOBS_SQS_DISPATCH_TIMEOUT_SECONDS",
    "ASYNC_JOBS_REDIS_DISPATCH_TIMEOUT_SECONDS",
    "ASYNC_JOBS_MAIL_DEFAULT_DELAY_TOLERANCE_SECONDS",
    "ASYNC_JOBS_RETAIN_SUCCEEDED_HOURS",
    "ASYNC_JOBS_RETAIN_CANCELLED_HOURS",
    "ASYNC_JOBS_RETAIN_FAILED_HOURS",
    "ASYNC_JOBS_SCHEDULER_INTERVAL_SECONDS",
    "ASYNC_JOBS_LEADER_LEASE_SECONDS",
    "ASYNC_JOBS_LEASE_SECONDS",
    "ASYNC_JOBS_WEBHOOK_TIMEOUT_SECONDS",
    "ASYNC_JOBS_POLL_INTERVAL_SECONDS",
    "ASYNC_JOBS_WORKER_GRACE_SECONDS",
    "ASYNC_JOBS_STORE_WAIT_SECONDS",
]


@pytest.mark.parametrize("value", ["nan", "NaN", "inf", "-inf", "infinity", "1e300", "-1"])
@pytest.mark.parametrize("variable", DURATION_VARIABLES)
def test_a_duration_must_be_a_finite_non_negative_number(variable: str, value: str) -> None:
    with pytest.raises(ConfigurationError, match="non-negative number up to") as raised:
        Settings.from_env({variable: value})
    assert variable in raised.value.message


@pytest.mark.parametrize(
    "field", ["lease_seconds", "worker_grace_seconds", "store_wait_seconds", "leader_lease_seconds"]
)
@pytest.mark.parametrize("value", [float("nan"), float("inf"), -1.0])
def test_settings_made_in_code_refuse_what_the_environment_would(field: str, value: float) -> None:
    with pytest.raises(ConfigurationError, match=f"ASYNC_JOBS_{field.upper()} must be"):
        Settings(**{field: value})  # type: ignore[arg-type]
    with pytest.raises(ConfigurationError, match="ASYNC_JOBS_MAIL_DEFAULT_DELAY_TOLERANCE"):
        Settings(delay_tolerance={"mail": value})


def test_a_lease_is_at_least_a_second_and_a_tolerance_at_most_the_longest_delay() -> None:
    for lease in ("1e-9", "0", "0.5"):
        with pytest.raises(ConfigurationError, match="ASYNC_JOBS_LEASE_SECONDS must be a number"):
            Settings.from_env({"ASYNC_JOBS_LEASE_SECONDS": lease})
    assert Settings.from_env({"ASYNC_JOBS_LEASE_SECONDS": "1"}).lease_seconds == 1.0
    key = "ASYNC_JOBS_MAIL_DEFAULT_DELAY_TOLERANCE_SECONDS"
    with pytest.raises(ConfigurationError, match=f"{key} must be .* up to 31622400"):
        Settings.from_env({key: "1e15"})  # every enqueue of the use case would be a 422
    longest = Settings.from_env({key: str(MAX_DELAY_SECONDS)})
    assert longest.delay_tolerance_for("mail") == MAX_DELAY_SECONDS
    assert Settings.from_env({key: "0"}).delay_tolerance_for("mail") == 0


@pytest.mark.parametrize(
    ("env", "named"),
    [
        ({"ASYNC_JOBS_SCHEDULER_INTERVAL_SECONDS": "0"}, ["SCHEDULER_INTERVAL_SECONDS"]),
        (
            {"ASYNC_JOBS_LEADER_LEASE_SECONDS": "1"},
            ["LEADER_LEASE_SECONDS", "SCHEDULER_INTERVAL_SECONDS"],
        ),
        (
            {"ASYNC_JOBS_SCHEDULER_INTERVAL_SECONDS": "6"},
            ["LEADER_LEASE_SECONDS", "SCHEDULER_INTERVAL_SECONDS"],
        ),
        ({"ASYNC_JOBS_POLL_INTERVAL_SECONDS": "0"}, ["POLL_INTERVAL_SECONDS"]),
    ],
)
def test_the_leader_lease_must_outlast_a_scheduler_round(
    env: dict[str, str], named: list[str]
) -> None:
    with pytest.raises(ConfigurationError) as raised:
        Settings.from_env(env)
    assert all(f"ASYNC_JOBS_{name}" in raised.value.message for name in named)
    with pytest.raises(ConfigurationError, match="LEADER_LEASE_SECONDS"):
        Settings(scheduler_interval_seconds=2.0, leader_lease_seconds=2.0)
    Settings(scheduler_interval_seconds=0.2, leader_lease_seconds=1.5)  # as the tests run


@pytest.mark.parametrize(
    "args",
    [
        ["worker", "--grace", "nan"],
        ["worker", "--grace", "inf"],
        ["worker", "--grace", "-1"],
        ["worker", "--reap-interval", "nan"],
        ["enqueue", "echo", "--wait", "nan"],
        ["enqueue", "echo", "--wait", "-1"],
        ["enqueue", "echo", "--wait", "1e300"],
        ["enqueue", "echo", "--delay", "inf"],
        ["api", "--port", "99999"],
        ["api", "--port", "-1"],
        ["serve", "--port", "0"],
        ["worker", "--metrics-port", "-1"],
        ["scheduler", "--metrics-port", "65536"],
        ["bench", "--latency-interval-ms", "nan"],
    ],
)
def test_a_bad_number_in_a_flag_stops_the_command_as_it_is_parsed(
    args: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exited:
        build_parser().parse_args(args)
    assert exited.value.code == 2
    error = capsys.readouterr().err.splitlines()[-1]
    assert error.startswith(f"async-jobs: error: argument {args[-2]}: must be a "), error
    assert f"not {args[-1]!r}" in error


def test_numbers_in_flags_within_their_bounds_are_taken() -> None:
    parse = build_parser().parse_args
    assert parse(["worker", "--grace", "0", "--metrics-port", "0"]).grace == 0
    assert parse(["enqueue", "echo", "--wait", "2.5", "--delay", "1e3"]).wait == 2.5
    assert parse(["api", "--port", "65535"]).port == 65535


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
