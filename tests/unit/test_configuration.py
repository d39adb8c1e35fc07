"""Configuration by environment, its documentation, what a process says when it starts, and
the names users bring from other job servers."""

from __future__ import annotations

import re
from datetime import UTC, datetime
from pathlib import Path

import httpx
import pytest
from fastapi import FastAPI

import async_jobs
from async_jobs import AsyncJobsClient, AsyncJobsHttpClient, JobApp, JobsClient, Leader, Settings
from async_jobs.api import TokenAuth, create_api, create_jobs_router
from async_jobs.bench import redact_dsn
from async_jobs.core.settings import ENVIRONMENT_VARIABLES, mask_url
from async_jobs.domain.errors import ConfigurationError
from async_jobs.runner import (
    check_configuration,
    startup_line,
    startup_warnings,
    worker_config,
)
from async_jobs.stores.memory import MemoryStore

ROOT = Path(__file__).resolve().parents[2]
NAME = re.compile(r"ASYNC_JOBS_[A-Z0-9_<>]*[A-Z0-9>]")


def _as_pattern(variable: str) -> re.Pattern[str]:
    return re.compile("^" + re.sub(r"<[A-Z_]+>", "[A-Z0-9_]+", variable) + "$")


def readme_variables() -> set[str]:
    """The variables of the README's configuration table (its first column)."""
    text = (ROOT / "README.md").read_text()
    section = text.split("## Configuration", 1)[1].split("\n## ", 1)[0]
    return {
        name
        for line in section.splitlines()
        if line.startswith("| `ASYNC_JOBS_")
        for name in NAME.findall(line.split("|")[1])
    }


def variables_in_code() -> set[str]:
    """Every ``ASYNC_JOBS_*`` name the package's code spells out: as a literal, or as
    ``f"{PREFIX}NAME"``; a name that ends in ``_`` is a prefix (``SQS_QUEUE_``...)."""
    found = set()
    for path in (ROOT / "src" / "async_jobs").rglob("*.py"):
        text = path.read_text()
        found |= {f"ASYNC_JOBS_{m}" for m in re.findall(r"\{PREFIX\}([A-Z0-9_]+)", text)}
        found |= set(re.findall(r"\bASYNC_JOBS_[A-Z0-9_]+", text))
    return found - {"ASYNC_JOBS_"}


def test_the_readme_table_lists_exactly_the_known_variables() -> None:
    assert readme_variables() == set(ENVIRONMENT_VARIABLES)


def test_every_variable_the_code_names_is_known() -> None:
    patterns = [_as_pattern(v) for v in ENVIRONMENT_VARIABLES]
    prefixes = [v.split("<")[0] for v in ENVIRONMENT_VARIABLES]
    unknown = {
        name
        for name in variables_in_code()
        if not any(p.match(name) for p in patterns)
        and not (name.endswith("_") and any(p.startswith(name) for p in prefixes))
    }
    assert not unknown, f"add these to ENVIRONMENT_VARIABLES and the README table: {unknown}"


def test_every_known_variable_is_read_by_the_settings() -> None:
    """Each variable changes what ``Settings.from_env`` returns (so none is listed only)."""
    samples = {
        "ASYNC_JOBS_DB_DSN": "postgresql://u:p@h/d",
        "ASYNC_JOBS_HANDLERS": "async_jobs.demo",
        "ASYNC_JOBS_TRANSPORT": "sqs",
        "ASYNC_JOBS_SQS_QUEUE_<USE_CASE>": "http://q",
        "ASYNC_JOBS_REDIS_URL": "redis://h",
        "ASYNC_JOBS_<USE_CASE>_DEFAULT_DELAY_TOLERANCE_SECONDS": "7",
        "ASYNC_JOBS_PER_TENANT_QUOTAS": '{"t": {"*": {"max_pending": 1}}}',
        "ASYNC_JOBS_ENQUEUE_AUTH_TOKEN": "x",
        "ASYNC_JOBS_API_TOKENS": '{"tok": "*"}',
        "ASYNC_JOBS_PERIODIC_JOBS": '[{"cron": "* * * * *", "type": "echo"}]',
        "ASYNC_JOBS_WEBHOOK_SECRET": "s",
        "ASYNC_JOBS_WEBHOOK_SECRETS": '{"t": "s"}',
        "ASYNC_JOBS_WEBHOOK_ALLOWED_HOSTS": "10.0.0.1",
        "ASYNC_JOBS_WORKER_USE_CASES": "a,b",
        "ASYNC_JOBS_API_HOST": "0.0.0.0",
        "ASYNC_JOBS_API_PREFIX": "/api/v1",
        "ASYNC_JOBS_CORS_ORIGINS": "https://a.example",
        "ASYNC_JOBS_SQS_ENDPOINT_URL": "http://sqs",
        "ASYNC_JOBS_RETAIN_SUCCEEDED_HOURS": "off",
        "ASYNC_JOBS_RETAIN_CANCELLED_HOURS": "off",
        "ASYNC_JOBS_RETAIN_FAILED_HOURS": "off",
        "ASYNC_JOBS_SQS_LONG_POLL_SECONDS": "3",
        "ASYNC_JOBS_SQS_VISIBILITY_TIMEOUT_SECONDS": "31",
        "ASYNC_JOBS_API_PORT": "8123",
        "ASYNC_JOBS_LOG_FORMAT": "json",
        "ASYNC_JOBS_LOG_LEVEL": "DEBUG",
        "ASYNC_JOBS_METRICS_HOST": "127.0.0.1",
        "ASYNC_JOBS_METRICS_TENANT_LABEL": "true",
    }
    default = Settings.from_env({})
    for variable in ENVIRONMENT_VARIABLES:
        if not variable.startswith("ASYNC_JOBS_"):
            continue
        key = variable.replace("<USE_CASE>", "MAIL")
        value = samples.get(variable, "3")
        assert Settings.from_env({key: value}) != default, variable


def test_worker_and_api_settings_come_from_the_environment() -> None:
    settings = Settings.from_env(
        {
            "ASYNC_JOBS_WORKER_CONCURRENCY": "25",
            "ASYNC_JOBS_WORKER_USE_CASES": "mail, reports",
            "ASYNC_JOBS_WORKER_GRACE_SECONDS": "90",
            "ASYNC_JOBS_API_HOST": "0.0.0.0",
            "ASYNC_JOBS_API_PORT": "9000",
            "ASYNC_JOBS_API_PREFIX": "/api/v1/",
            "ASYNC_JOBS_CORS_ORIGINS": "https://a.example, https://b.example",
            "ASYNC_JOBS_STORE_WAIT_SECONDS": "5",
        }
    )
    assert (settings.worker_concurrency, settings.worker_use_cases) == (25, ("mail", "reports"))
    assert (settings.worker_grace_seconds, settings.store_wait_seconds) == (90.0, 5.0)
    assert (settings.api_host, settings.api_port, settings.api_prefix) == (
        "0.0.0.0",
        9000,
        "/api/v1",
    )
    assert settings.cors_origins == ("https://a.example", "https://b.example")
    config = worker_config(JobApp(settings=settings, store=MemoryStore()))
    assert (config.concurrency, config.use_cases, config.grace_seconds) == (
        25,
        ("mail", "reports"),
        90.0,
    )
    # Arguments (the command line's flags) override the environment.
    flagged = worker_config(
        JobApp(settings=settings, store=MemoryStore()),
        concurrency=3,
        use_cases=["x"],
        grace_seconds=1,
    )
    assert (flagged.concurrency, flagged.use_cases, flagged.grace_seconds) == (3, ("x",), 1)


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        ("ASYNC_JOBS_WORKER_CONCURRENCY", "0", "positive integer"),
        ("ASYNC_JOBS_API_PORT", "70000", "1 to 65535"),
        ("ASYNC_JOBS_API_PREFIX", "api", "must start with /"),
        ("ASYNC_JOBS_WORKER_GRACE_SECONDS", "soon", "non-negative number"),
        ("ASYNC_JOBS_API_TOKENS", "{not json", "not valid JSON"),
        ("ASYNC_JOBS_DISPATCH_WINDOW", "0", "positive integer"),
    ],
)
def test_a_bad_value_names_its_variable(key: str, value: str, message: str) -> None:
    with pytest.raises(ConfigurationError, match=message) as raised:
        Settings.from_env({key: value})
    assert key in raised.value.message


def test_the_public_view_masks_every_secret() -> None:
    settings = Settings.from_env(
        {
            "ASYNC_JOBS_DB_DSN": "postgresql://app:pg-s3cret@db:5432/jobs",
            "ASYNC_JOBS_REDIS_URL": "redis://:redis-s3cret@cache:6379/0",
            "ASYNC_JOBS_ENQUEUE_AUTH_TOKEN": "tok-s3cret",
            "ASYNC_JOBS_API_TOKENS": '{"tenant-s3cret": "tenant-a", "admin-s3cret": "*"}',
            "ASYNC_JOBS_WEBHOOK_SECRET": "hook-s3cret",
            "ASYNC_JOBS_WEBHOOK_SECRETS": '{"tenant-a": "tenant-hook-s3cret"}',
        }
    )
    shown = settings.to_public_json()
    assert "s3cret" not in repr(shown)
    assert shown["db_dsn"] == "postgresql://app:****@db:5432/jobs"
    assert shown["redis_url"] == "redis://:****@cache:6379/0"
    assert shown["api_tokens"] == [
        {"token": "****", "acts_for": "tenant-a"},
        {"token": "****", "acts_for": "*"},
    ]
    assert shown["webhook_secrets"] == {"tenant-a": "****"}
    assert shown["enqueue_auth_token"] == shown["webhook_secret"] == "****"
    assert set(shown) == set(Settings.__dataclass_fields__)


def test_a_url_without_a_password_is_shown_as_is() -> None:
    assert mask_url("sqlite:///async_jobs.db") == "sqlite:///async_jobs.db"
    assert mask_url("postgresql://postgres@127.0.0.1/x") == "postgresql://postgres@127.0.0.1/x"
    kept = "postgresql://app@db/jobs?sslmode=require&application_name=w%201#x"
    assert mask_url(kept) == kept


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        (
            "postgresql://app@127.0.0.1:5432/db?password=s3cret",
            "postgresql://app@127.0.0.1:5432/db?password=****",
        ),
        (
            "postgresql://app:s3cret@db/jobs?sslmode=verify-full&sslpassword=s3cret&connect_timeout=5",
            "postgresql://app:****@db/jobs?sslmode=verify-full&sslpassword=****&connect_timeout=5",
        ),
        (
            "postgresql:///jobs?host=/run/pg&PASSWORD=s3cret",
            "postgresql:///jobs?host=/run/pg&PASSWORD=****",
        ),
        ("redis://cache:6379/0?password=s3cret", "redis://cache:6379/0?password=****"),
        ("amqp://app@mq/vhost?auth_token=s3cret", "amqp://app@mq/vhost?auth_token=****"),
        ("sqlite:///jobs.db?passphrase=s3cret", "sqlite:///jobs.db?passphrase=****"),
    ],
)
def test_a_password_in_the_query_string_is_masked(url: str, shown: str) -> None:
    assert mask_url(url) == shown
    assert "s3cret" not in redact_dsn(url)
    public = Settings.from_env({"ASYNC_JOBS_DB_DSN": url, "ASYNC_JOBS_REDIS_URL": url})
    assert "s3cret" not in repr(public.to_public_json())


def _demo_app(**env: str) -> JobApp:
    return JobApp(
        settings=Settings.from_env({"ASYNC_JOBS_HANDLERS": "async_jobs.demo", **env}),
        store=MemoryStore(),
    )


async def test_a_use_case_tolerance_applies_to_jobs_that_name_no_use_case() -> None:
    """A job without a use case is of the use case ``default``: its tolerance variable counts
    for it as for a job that names ``default``, and a handler's or the request's own wins."""
    jobs = _demo_app(
        ASYNC_JOBS_DEFAULT_DEFAULT_DELAY_TOLERANCE_SECONDS="77",
        ASYNC_JOBS_MAIL_DEFAULT_DELAY_TOLERANCE_SECONDS="5",
    )
    async with jobs:
        unnamed = await jobs.enqueue("echo", {})
        named = await jobs.enqueue("echo", {}, use_case="default")
        mail = await jobs.enqueue("echo", {}, use_case="mail")
        own = await jobs.enqueue("echo", {}, delay_tolerance_seconds=9)
    assert (unnamed.use_case, unnamed.delay_tolerance_seconds) == ("default", 77)
    assert named.delay_tolerance_seconds == 77
    assert (mail.delay_tolerance_seconds, own.delay_tolerance_seconds) == (5, 9)


def test_the_start_up_line_names_what_an_operator_checks_first() -> None:
    jobs = _demo_app(
        ASYNC_JOBS_DB_DSN="postgresql://app:pw@db/jobs", ASYNC_JOBS_MAIL_MAX_CONCURRENT="4"
    )
    config = worker_config(jobs, concurrency=8, use_cases=["mail", "default"])
    line = startup_line(jobs, "worker", config, id="w1")
    assert line == (
        f"version={async_jobs.runner.package_version()} id=w1 "
        "store=postgresql://app:****@db/jobs transport=direct "
        "types=echo,sleep,say_hello,fail concurrency=8 use_cases=mail,default "
        "limits=default=none,mail=4"
    )


def test_a_concurrency_beyond_the_use_case_limits_is_warned_about() -> None:
    jobs = _demo_app(ASYNC_JOBS_DB_DSN="postgresql://db/jobs")
    assert startup_warnings(jobs, "worker", worker_config(jobs, concurrency=50)) == []  # no cap
    jobs = _demo_app(
        ASYNC_JOBS_DB_DSN="postgresql://db/jobs", ASYNC_JOBS_DEFAULT_MAX_CONCURRENT="10"
    )
    assert startup_warnings(jobs, "worker", worker_config(jobs, concurrency=10)) == []
    [warning] = startup_warnings(jobs, "worker", worker_config(jobs, concurrency=50))
    assert "concurrency 50 but the use-case limits let at most 10 jobs" in warning


def test_the_embedded_store_is_noticed_in_fleet_processes_only() -> None:
    jobs = _demo_app()
    for role in ("worker", "scheduler", "api"):
        [notice] = startup_warnings(jobs, role)
        assert notice.startswith(f"NOTICE: async-jobs {role} runs on the embedded SQLite")
    assert startup_warnings(jobs, "serve") == []


def test_the_sqs_transport_needs_a_queue_for_each_use_case_it_serves() -> None:
    sqs = {"ASYNC_JOBS_TRANSPORT": "sqs"}
    with pytest.raises(ConfigurationError, match="no queue is configured"):
        check_configuration(_demo_app(**sqs), "scheduler")
    other = _demo_app(**sqs, ASYNC_JOBS_SQS_QUEUE_OTHER="http://q/other")
    with pytest.raises(ConfigurationError, match="ASYNC_JOBS_SQS_QUEUE_DEFAULT"):
        check_configuration(other, "worker", worker_config(other))
    with pytest.raises(ConfigurationError, match="ASYNC_JOBS_SQS_QUEUE_MAIL"):
        check_configuration(other, "worker", worker_config(other, use_cases=["mail"]))
    check_configuration(other, "worker", worker_config(other, use_cases=["other"]))
    check_configuration(other, "api")  # the API sends nothing to SQS


@pytest.mark.parametrize(
    ("env", "message"),
    [
        (
            {"ASYNC_JOBS_SQS_ENDPOINT_URL": "nonsense"},
            "ASYNC_JOBS_SQS_ENDPOINT_URL must be an http:// or https:// URL with a host, "
            "not 'nonsense'",
        ),
        ({"ASYNC_JOBS_SQS_ENDPOINT_URL": "http://"}, "ASYNC_JOBS_SQS_ENDPOINT_URL must be"),
        ({"ASYNC_JOBS_SQS_ENDPOINT_URL": "http://h:port"}, "ASYNC_JOBS_SQS_ENDPOINT_URL must"),
        ({"ASYNC_JOBS_SQS_QUEUE_DEFAULT": ""}, "ASYNC_JOBS_SQS_QUEUE_DEFAULT must be the queue's"),
        ({"ASYNC_JOBS_SQS_QUEUE_DEFAULT": "jobs"}, "ASYNC_JOBS_SQS_QUEUE_DEFAULT must be"),
        ({"ASYNC_JOBS_SQS_QUEUE_MAIL": "ftp://q/mail"}, "ASYNC_JOBS_SQS_QUEUE_MAIL must be"),
    ],
)
def test_the_sqs_transport_needs_urls_for_its_endpoint_and_queues(
    env: dict[str, str], message: str
) -> None:
    sqs = {
        "ASYNC_JOBS_TRANSPORT": "sqs",
        "ASYNC_JOBS_SQS_QUEUE_DEFAULT": "http://127.0.0.1:4566/000000000000/default",
    }
    jobs = _demo_app(**{**sqs, **env})
    for role in ("worker", "scheduler"):
        with pytest.raises(ConfigurationError, match=re.escape(message)):
            check_configuration(jobs, role, worker_config(jobs) if role == "worker" else None)
    good = _demo_app(**sqs, ASYNC_JOBS_SQS_ENDPOINT_URL="https://sqs.eu-west-1.amazonaws.com")
    check_configuration(good, "worker", worker_config(good))


def test_the_redis_transport_needs_a_url_and_a_stream_for_each_use_case_it_serves() -> None:
    redis = {"ASYNC_JOBS_TRANSPORT": "redis"}
    with pytest.raises(ConfigurationError, match="needs ASYNC_JOBS_REDIS_URL"):
        check_configuration(_demo_app(**redis), "worker")
    jobs = _demo_app(**redis, ASYNC_JOBS_REDIS_URL="redis://127.0.0.1:6379/0")
    check_configuration(jobs, "worker", worker_config(jobs))  # "default" has its stream
    with pytest.raises(ConfigurationError, match="add it to ASYNC_JOBS_REDIS_USE_CASES"):
        check_configuration(jobs, "worker", worker_config(jobs, use_cases=["mail"]))
    check_configuration(jobs, "api")  # the API sends nothing to Redis


async def test_create_jobs_router_refuses_what_is_not_an_app_and_an_auth() -> None:
    jobs = JobApp(store=MemoryStore())
    with pytest.raises(ConfigurationError, match="takes a JobApp as jobs"):
        create_jobs_router(lambda: jobs, None)  # type: ignore[arg-type]
    with pytest.raises(ConfigurationError, match=r"takes a TokenAuth as auth, e\.g\."):
        create_jobs_router(jobs, "s3cret")  # type: ignore[arg-type]
    app = FastAPI()
    app.include_router(create_jobs_router(jobs, TokenAuth({"s3cret": "*"})))
    async with jobs, _client(app) as http:
        assert (await http.get("/health")).status_code == 200
        assert (await http.get("/jobs")).status_code == 401


def _client(app: FastAPI) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test")


async def test_the_api_moves_under_its_prefix_and_answers_cors() -> None:
    settings = Settings(api_prefix="/api/v1", cors_origins=("https://app.example",))
    api = create_api(JobApp(settings=settings, store=MemoryStore()))
    async with api.router.lifespan_context(api), _client(api) as http:
        assert (await http.get("/api/v1/health")).status_code == 200
        assert (await http.get("/health")).status_code == 404
        assert (await http.get("/api/v1/openapi.json")).status_code == 200
        created = await http.post("/api/v1/jobs", json={"type": "echo", "delay_seconds": 60})
        assert created.status_code == 201
        deleted = await http.delete(f"/api/v1/jobs/{created.json()['id']}")
        assert deleted.json()["status"] == "cancelled"
        preflight = await http.options(
            "/api/v1/jobs",
            headers={
                "Origin": "https://app.example",
                "Access-Control-Request-Method": "POST",
                "Access-Control-Request-Headers": "authorization,content-type",
            },
        )
        assert preflight.status_code == 200
        assert preflight.headers["access-control-allow-origin"] == "https://app.example"
        listed = await http.get("/api/v1/jobs", headers={"Origin": "https://evil.example"})
        assert "access-control-allow-origin" not in listed.headers


def test_the_http_client_takes_auth_token_under_its_other_name() -> None:
    assert AsyncJobsHttpClient is AsyncJobsClient
    seen: list[str | None] = []

    def answer(request: httpx.Request) -> httpx.Response:
        seen.append(request.headers.get("authorization"))
        return httpx.Response(200, json={"status": "ok"})

    with JobsClient("http://x", auth_token="tok", transport=httpx.MockTransport(answer)) as c:
        c.health()
    assert seen == ["Bearer tok"]
    with pytest.raises(ValueError, match="not two different ones"):
        AsyncJobsHttpClient("http://x", token="a", auth_token="b")


def test_a_leader_reads_as_its_process_role_and_id() -> None:
    now = datetime.now(UTC)
    leader = Leader("worker/web-1:42:abc", now, now)
    assert (leader.process_role, leader.process_id) == ("worker", "web-1:42:abc")
    assert leader.to_json()["role"] == "worker"
    legacy = Leader("web-1:42:abc", now, now)  # written before roles were named
    assert (legacy.process_role, legacy.process_id) == ("scheduler", "web-1:42:abc")


async def test_the_app_says_which_process_leads_the_chores() -> None:
    jobs = JobApp(store=MemoryStore())
    async with jobs:
        assert await jobs.leader() is None
        config = jobs.scheduler_config("worker", "host:1:aa")
        assert await jobs.scheduler(config).run_once()
        leader = await jobs.leader()
        assert leader is not None
        assert (leader.process_role, leader.process_id) == ("worker", "host:1:aa")
        # A scheduler process stands for the same row: it waits while the worker leads.
        assert not await jobs.scheduler().run_once()
