"""Pure scheduling logic: the claim plan, quota parsing, cron ticks, retention settings."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

import pytest

from async_jobs.core.maintenance import PeriodicJob
from async_jobs.core.settings import Settings
from async_jobs.domain.errors import ConfigurationError
from async_jobs.domain.scheduling import (
    Candidate,
    Limits,
    TenantQuota,
    bucket_tokens,
    parse_quotas,
    percentiles,
    plan_claim,
)

T0 = datetime(2026, 1, 1, tzinfo=UTC)


def candidates(
    use_case: str, tenant: str, n: int, rank: int = 2, start: int = 0
) -> list[Candidate]:
    return [
        Candidate(
            uuid.uuid4(),
            use_case,
            tenant,
            rank,
            T0 + timedelta(seconds=start + i),
            T0 + timedelta(seconds=start + i),
        )
        for i in range(n)
    ]


def test_tenants_take_turns_within_a_priority() -> None:
    groups = {
        ("uc", "big"): candidates("uc", "big", 10),
        ("uc", "small"): candidates("uc", "small", 1, start=100),
    }
    chosen = plan_claim(groups, {"uc": 10}, {}, limit=3)
    assert [c.tenant_id for c in chosen] == ["big", "small", "big"]


def test_priority_comes_before_turns() -> None:
    groups = {
        ("uc", "a"): candidates("uc", "a", 3, rank=0),
        ("uc", "b"): candidates("uc", "b", 1, rank=3),
    }
    chosen = plan_claim(groups, {"uc": 10}, {}, limit=3)
    assert [c.tenant_id for c in chosen] == ["a", "a", "a"]


def test_free_slots_and_allowances_bound_each_use_case_and_tenant() -> None:
    groups = {
        ("uc", "a"): candidates("uc", "a", 5),
        ("uc", "b"): candidates("uc", "b", 5),
        ("other", "a"): candidates("other", "a", 5),
    }
    chosen = plan_claim(groups, {"uc": 3, "other": 0}, {("uc", "a"): 1}, limit=10)
    assert sorted(c.tenant_id for c in chosen) == ["a", "b", "b"]
    assert {c.use_case for c in chosen} == {"uc"}


def test_the_limit_bounds_the_whole_claim() -> None:
    groups = {(uc, "t"): candidates(uc, "t", 5) for uc in ("x", "y")}
    assert len(plan_claim(groups, {"x": 10, "y": 10}, {}, limit=4)) == 4


def test_a_rate_bucket_starts_full_and_refills_up_to_one_second() -> None:
    quota = TenantQuota(max_per_second=5)
    assert bucket_tokens(quota, None, 0) == 5
    assert bucket_tokens(quota, 0.0, 0.5) == 2.5
    assert bucket_tokens(quota, 1.0, 60) == 5
    assert bucket_tokens(TenantQuota(max_per_second=0.5), None, 0) == 1  # at least one start
    assert bucket_tokens(TenantQuota(), None, 0) == float("inf")


def test_quotas_parse_with_a_use_case_wildcard() -> None:
    raw = {"t1": {"mail": {"max_pending": 3}, "*": {"max_running": 2, "max_per_second": 1.5}}}
    limits = Limits(quotas=parse_quotas(raw, "Q"))
    assert limits.quota("t1", "mail") == TenantQuota(max_pending=3)
    assert limits.quota("t1", "sms") == TenantQuota(max_running=2, max_per_second=1.5)
    assert limits.quota("t2", "mail") is None
    assert limits.quota_rows() == [("t1", "*", 2, 1.5), ("t1", "mail", None, None)]


@pytest.mark.parametrize(
    "raw",
    [
        {"t1": ["mail"]},
        {"t1": {"mail": 3}},
        {"t1": {"mail": {"max_pendin": 3}}},
        {"t1": {"mail": {"max_pending": -1}}},
        {"t1": {"mail": {"max_running": 1.5}}},
        {"t1": {"mail": {"max_per_second": 0}}},
        {"t1": {"mail": {"max_per_second": True}}},
    ],
)
def test_bad_quotas_are_configuration_errors(raw: dict[str, object]) -> None:
    with pytest.raises(ConfigurationError, match="Q"):
        parse_quotas(raw, "Q")


def test_settings_read_limits_quotas_and_retention() -> None:
    settings = Settings.from_env(
        {
            "ASYNC_JOBS_MAIL_MAX_CONCURRENT": "3",
            "ASYNC_JOBS_PER_TENANT_QUOTAS": '{"t1": {"mail": {"max_running": 1}}}',
            "ASYNC_JOBS_RETAIN_SUCCEEDED_HOURS": "2",
            "ASYNC_JOBS_RETAIN_FAILED_HOURS": "off",
        }
    )
    limits = settings.limits()
    # A use case without its own ASYNC_JOBS_<USE_CASE>_MAX_CONCURRENT has no cap.
    assert (limits.max_concurrent_for("mail"), limits.max_concurrent_for("sms")) == (3, None)
    assert limits.quota("t1", "mail") == TenantQuota(max_running=1)
    # Guarded (counted, claimed in turns): a cap or a quota; sms has neither.
    assert (limits.guarded("mail"), limits.guarded("sms")) == (True, False)
    assert Limits(max_concurrent={"mail": 3}, quotas={"t1": {"*": TenantQuota()}}).guarded("sms")
    assert Limits(default_max_concurrent=10).guarded("sms")
    assert settings.retention.ages() == {"succeeded": 7200.0, "cancelled": 86400.0}
    with pytest.raises(ConfigurationError, match="PER_TENANT_QUOTAS"):
        Settings.from_env({"ASYNC_JOBS_PER_TENANT_QUOTAS": '{"t1": {"mail": {"max": 1}}}'})


def test_percentiles_interpolate() -> None:
    assert percentiles([]) == {"p50": None, "p95": None, "p99": None}
    got = percentiles([float(v) for v in range(1, 101)])
    assert got["p50"] == pytest.approx(50.5)
    assert got["p99"] == pytest.approx(99.01)


@pytest.mark.parametrize(
    ("cron", "now", "tick"),
    [
        ("*/5 * * * *", "2026-01-01T10:04:59", "2026-01-01T10:00:00"),
        ("*/5 * * * *", "2026-01-01T10:05:00", "2026-01-01T10:05:00"),
        ("*/5 * * * *", "2026-01-01T10:05:30", "2026-01-01T10:05:00"),
        ("0 3 * * 1", "2026-01-07T00:00:00", "2026-01-05T03:00:00"),
    ],
)
def test_the_latest_tick_is_at_or_before_now(cron: str, now: str, tick: str) -> None:
    job = PeriodicJob("p", cron, "echo")
    at = datetime.fromisoformat(now).replace(tzinfo=UTC)
    assert job.latest_tick(at) == datetime.fromisoformat(tick).replace(tzinfo=UTC)


def test_a_bad_cron_expression_is_a_configuration_error() -> None:
    with pytest.raises(ConfigurationError, match="cron"):
        PeriodicJob("p", "every five minutes", "echo")


def test_periodic_jobs_from_configuration() -> None:
    from async_jobs import JobApp

    settings = Settings.from_env(
        {
            "ASYNC_JOBS_DB_DSN": "memory://",
            "ASYNC_JOBS_PERIODIC_JOBS": '[{"cron": "0 * * * *", "type": "echo", '
            '"name": "hourly", "payload": {"n": 1}, "priority": "high"}]',
        }
    )
    app = JobApp(settings=settings)
    app.scheduler()
    [job] = app.periodic_jobs
    assert (job.name, job.cron, job.type, job.payload) == ("hourly", "0 * * * *", "echo", {"n": 1})
    assert job.options == {"priority": "high"}
    for bad in ('{"cron": "x"}', '[{"type": "echo"}]', "[1]"):
        with pytest.raises(ConfigurationError, match="PERIODIC_JOBS"):
            Settings.from_env({"ASYNC_JOBS_PERIODIC_JOBS": bad})
    wrong = Settings.from_env(
        {"ASYNC_JOBS_PERIODIC_JOBS": '[{"cron": "0 * * * *", "type": "echo", "colour": 1}]'}
    )
    with pytest.raises(ConfigurationError, match="colour"):
        JobApp(settings=wrong).scheduler()


def test_periodic_marks_in_a_handler_module() -> None:
    import types

    import async_jobs
    from async_jobs import JobApp

    module = types.ModuleType("periodic_handlers")

    @async_jobs.periodic("*/10 * * * *", payload={"full": True}, priority="low")
    @async_jobs.job("sync_rates", use_case="rates")
    async def sync_rates(ctx: object, payload: dict[str, object]) -> None: ...

    @async_jobs.periodic("0 0 * * *", name="midnight")
    async def plain(ctx: object, payload: dict[str, object]) -> None: ...

    module.sync_rates = sync_rates  # type: ignore[attr-defined]
    module.plain = plain  # type: ignore[attr-defined]
    sync_rates.__module__ = plain.__module__ = module.__name__
    app = JobApp("memory://", handler_modules=[module])
    assert sorted(app.registry.types) == ["plain", "sync_rates"]
    app.scheduler()
    found = {(p.name, p.cron, p.type): dict(p.options) for p in app.periodic_jobs}
    assert found == {
        ("sync_rates", "*/10 * * * *", "sync_rates"): {"priority": "low"},
        ("midnight", "0 0 * * *", "plain"): {},
    }
