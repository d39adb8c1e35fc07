"""Starting processes as a container platform does: configured by environment, failing fast
with a message and an exit status, saying what they run, and the entry points users call."""

from __future__ import annotations

import argparse
import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from async_jobs.cli import COMMAND_DOCS, build_parser
from tests.acceptance.conftest import Cli
from tests.acceptance.test_cli import wait_for_line
from tests.helpers import free_port

DEMO = {"ASYNC_JOBS_HANDLERS": "async_jobs.demo"}

# Imported by the interpreter at start (it is first on PYTHONPATH): aiobotocore fails to
# import, as on an installation without the sqs extra.
NO_AIOBOTOCORE = """
import sys

class _Missing:
    def find_spec(self, name, path=None, target=None):
        if name == "aiobotocore" or name.startswith("aiobotocore."):
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
        return None

sys.meta_path.insert(0, _Missing())
"""


def test_the_help_speaks_to_users(cli: Cli) -> None:
    shown = cli.run("--help")
    assert shown.returncode == 0
    assert shown.stdout.startswith("usage: async-jobs")
    assert "Durable background jobs" in shown.stdout
    assert "Nothing else lives here" not in shown.stdout
    parser = build_parser()
    [commands] = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    for name, sub in commands.choices.items():
        text = sub.format_help()
        does, _, example = COMMAND_DOCS[name]
        assert "reads: " in text and "example:" in text, name
        assert example in text and does.split(". ")[0][:40] in " ".join(text.split()), name
    assert "/dashboard" in " ".join(commands.choices["serve"].format_help().split())


def test_config_prints_the_effective_configuration_with_secrets_masked(cli: Cli) -> None:
    env = {
        "ASYNC_JOBS_DB_DSN": "postgresql://app:pg-s3cret@db:5432/jobs",
        "ASYNC_JOBS_ENQUEUE_AUTH_TOKEN": "tok-s3cret",
        "ASYNC_JOBS_WORKER_CONCURRENCY": "25",
        "ASYNC_JOBS_API_PREFIX": "/api/v1",
    }
    shown = cli.run("config", **env)
    assert shown.returncode == 0, shown.stderr
    config = json.loads(shown.stdout)
    assert config["db_dsn"] == "postgresql://app:****@db:5432/jobs"
    assert (config["worker_concurrency"], config["api_prefix"]) == (25, "/api/v1")
    table = cli.run("config", "--format", "table", **env)
    assert "s3cret" not in shown.stdout + table.stdout
    assert any(line.split() == ["worker_concurrency", "25"] for line in table.stdout.splitlines())


def test_a_password_in_the_query_string_of_the_dsn_is_never_shown(
    cli: Cli, tmp_path: Path, pg_database: str
) -> None:
    # The test server trusts local connections: the password is taken and not needed.
    dsn = f"{pg_database}?password=pw-s3cret&application_name=w"
    shown = cli.run("config", ASYNC_JOBS_DB_DSN=dsn)
    assert shown.returncode == 0, shown.stderr
    assert json.loads(shown.stdout)["db_dsn"] == f"{pg_database}?password=****&application_name=w"
    worker = cli.run("worker", "--burst", ASYNC_JOBS_DB_DSN=dsn, **DEMO)
    assert worker.returncode == 0, worker.stderr
    [ready] = [line for line in worker.stdout.splitlines() if "worker ready" in line]
    assert f"store={pg_database}?password=****&application_name=w " in ready
    unreachable = f"postgresql://app@127.0.0.1:{free_port()}/jobs?sslpassword=pw-s3cret"
    failed = cli.run(
        "worker", ASYNC_JOBS_DB_DSN=unreachable, ASYNC_JOBS_STORE_WAIT_SECONDS="0", **DEMO
    )
    _fails_at_start(failed, 1, "?sslpassword=**** did not answer")
    assert "s3cret" not in shown.stdout + worker.stdout + worker.stderr + failed.stderr


def _fails_at_start(result: subprocess.CompletedProcess[str], status: int, message: str) -> None:
    assert result.returncode == status, (result.stdout, result.stderr)
    assert message in result.stderr
    assert "Traceback" not in result.stderr
    assert "ready" not in result.stdout


def test_the_sqs_transport_without_aiobotocore_stops_at_start(
    cli: Cli, tmp_path: Path, pg_database: str
) -> None:
    shim = tmp_path / "shim"
    shim.mkdir()
    (shim / "sitecustomize.py").write_text(NO_AIOBOTOCORE)
    env = {
        **DEMO,
        "ASYNC_JOBS_DB_DSN": pg_database,
        "ASYNC_JOBS_TRANSPORT": "sqs",
        "ASYNC_JOBS_SQS_QUEUE_DEFAULT": "http://127.0.0.1:1/queue/default",
        "PYTHONPATH": f"{shim}:{Path(__file__).resolve().parents[2]}",
    }
    for command in ("scheduler", "worker"):
        _fails_at_start(
            cli.run(command, timeout=30, **env),
            2,
            "ASYNC_JOBS_TRANSPORT=sqs needs aiobotocore, which cannot be imported",
        )


@pytest.mark.parametrize(
    ("command", "env", "message"),
    [
        (
            "scheduler",
            {"ASYNC_JOBS_TRANSPORT": "sqs"},
            "no queue is configured: set ASYNC_JOBS_SQS_QUEUE_<USE_CASE>",
        ),
        (
            "worker",
            {"ASYNC_JOBS_TRANSPORT": "sqs", "ASYNC_JOBS_SQS_QUEUE_MAIL": "http://q/mail"},
            "no queue for use case 'default': set ASYNC_JOBS_SQS_QUEUE_DEFAULT",
        ),
        ("worker", {"ASYNC_JOBS_PER_TENANT_QUOTAS": "{oops"}, "ASYNC_JOBS_PER_TENANT_QUOTAS"),
        ("api", {"ASYNC_JOBS_API_TOKENS": "[1, 2"}, "ASYNC_JOBS_API_TOKENS is not valid JSON"),
        ("scheduler", {"ASYNC_JOBS_PERIODIC_JOBS": "nope"}, "ASYNC_JOBS_PERIODIC_JOBS"),
        ("worker", {"ASYNC_JOBS_WORKER_CONCURRENCY": "many"}, "ASYNC_JOBS_WORKER_CONCURRENCY"),
        (
            "scheduler",
            {"ASYNC_JOBS_SCHEDULER_INTERVAL_SECONDS": "0"},
            "ASYNC_JOBS_SCHEDULER_INTERVAL_SECONDS must be more than 0",
        ),
        *(
            (
                command,
                {"ASYNC_JOBS_LEADER_LEASE_SECONDS": "1"},
                "ASYNC_JOBS_LEADER_LEASE_SECONDS (1) must be longer than "
                "ASYNC_JOBS_SCHEDULER_INTERVAL_SECONDS (1)",
            )
            for command in ("scheduler", "worker", "serve")
        ),
        (
            "worker",
            {"ASYNC_JOBS_WORKER_GRACE_SECONDS": "nan"},
            "ASYNC_JOBS_WORKER_GRACE_SECONDS must be a non-negative number up to 1000000000, "
            "not 'nan'",
        ),
        ("worker", {"ASYNC_JOBS_LEASE_SECONDS": "inf"}, "ASYNC_JOBS_LEASE_SECONDS must be"),
        (
            "worker",
            {"ASYNC_JOBS_LEASE_SECONDS": "1e-9"},
            "ASYNC_JOBS_LEASE_SECONDS must be a number from 1 to",
        ),
        (
            "api",
            {"ASYNC_JOBS_DEFAULT_DEFAULT_DELAY_TOLERANCE_SECONDS": "1e15"},
            "ASYNC_JOBS_DEFAULT_DEFAULT_DELAY_TOLERANCE_SECONDS must be a non-negative number "
            "up to 31622400",
        ),
        (
            "worker",
            {
                "ASYNC_JOBS_TRANSPORT": "sqs",
                "ASYNC_JOBS_SQS_QUEUE_DEFAULT": "http://127.0.0.1:1/000000000000/default",
                "ASYNC_JOBS_SQS_ENDPOINT_URL": "nonsense",
            },
            "ASYNC_JOBS_SQS_ENDPOINT_URL must be an http:// or https:// URL",
        ),
        (
            "scheduler",
            {"ASYNC_JOBS_TRANSPORT": "sqs", "ASYNC_JOBS_SQS_QUEUE_DEFAULT": ""},
            "ASYNC_JOBS_SQS_QUEUE_DEFAULT must be the queue's URL",
        ),
    ],
    ids=[
        "sqs-no-queue",
        "sqs-no-queue-for-a-use-case",
        "quotas",
        "tokens",
        "periodic",
        "number",
        "no-scheduler-round",
        "leader-lease-scheduler",
        "leader-lease-worker",
        "leader-lease-serve",
        "nan-grace",
        "infinite-lease",
        "tiny-lease",
        "huge-tolerance",
        "sqs-endpoint",
        "sqs-empty-queue",
    ],
)
def test_a_configuration_that_cannot_work_stops_the_process_at_start(
    cli: Cli, pg_database: str, command: str, env: dict[str, str], message: str
) -> None:
    env = {**DEMO, "ASYNC_JOBS_DB_DSN": pg_database, **env}
    _fails_at_start(cli.run(command, timeout=30, **env), 2, message)


def test_an_unreachable_store_stops_the_process_after_the_retry_window(cli: Cli) -> None:
    env = {
        **DEMO,
        "ASYNC_JOBS_DB_DSN": f"postgresql://app:pw-s3cret@127.0.0.1:{free_port()}/jobs",
        "ASYNC_JOBS_STORE_WAIT_SECONDS": "1.5",
    }
    for command in ("worker", "scheduler", "api"):
        began = time.monotonic()
        result = cli.run(command, timeout=30, **env)
        _fails_at_start(result, 1, "did not answer within 1.5 s (ASYNC_JOBS_STORE_WAIT_SECONDS)")
        assert "pw-s3cret" not in result.stderr and "app:****@" in result.stderr
        assert "retrying" in result.stderr  # it did retry, within the window
        assert time.monotonic() - began < 20


def test_a_worker_says_what_it_runs_and_what_bounds_it(cli: Cli, tmp_path: Path) -> None:
    env = {
        **DEMO,
        "ASYNC_JOBS_DB_DSN": f"sqlite:///{tmp_path / 'jobs.db'}",
        "ASYNC_JOBS_DEFAULT_MAX_CONCURRENT": "10",
    }
    assert cli.run("migrate", **env).returncode == 0
    worker = cli.run("worker", "--burst", "--concurrency", "50", **env)
    assert worker.returncode == 0, worker.stderr
    [line] = [x for x in worker.stdout.splitlines() if x.startswith("async-jobs worker ready:")]
    fields = dict(field.split("=", 1) for field in line.split(": ", 1)[1].split())
    assert fields["store"] == f"sqlite:///{tmp_path / 'jobs.db'}"
    assert fields["transport"] == "direct" and fields["types"] == "echo,sleep,say_hello,fail"
    assert (fields["concurrency"], fields["limits"]) == ("50", "default=10")
    assert fields["version"] and fields["id"]
    assert "NOTICE: async-jobs worker runs on the embedded SQLite store" in worker.stderr
    assert "WARNING: concurrency 50 but the use-case limits let at most 10" in worker.stderr


def test_the_api_is_configured_by_environment(cli: Cli, tmp_path: Path) -> None:
    port = free_port()
    env = {
        "ASYNC_JOBS_DB_DSN": f"sqlite:///{tmp_path / 'jobs.db'}",
        "ASYNC_JOBS_API_HOST": "127.0.0.1",
        "ASYNC_JOBS_API_PORT": str(port),
        "ASYNC_JOBS_API_PREFIX": "/api/v1",
        "ASYNC_JOBS_CORS_ORIGINS": "https://app.example",
        "ASYNC_JOBS_ENQUEUE_AUTH_TOKEN": "tok",
    }
    assert cli.run("migrate", **env).returncode == 0
    api = cli.start("api", **env)
    line = wait_for_line(api, "async-jobs api:")
    assert f"http://127.0.0.1:{port}/api/v1 " in line
    base = f"http://127.0.0.1:{port}/api/v1"
    assert httpx.get(f"{base}/health").status_code == 200
    auth = {"Authorization": "Bearer tok"}
    made = httpx.post(f"{base}/jobs", json={"type": "echo", "delay_seconds": 60}, headers=auth)
    assert made.status_code == 201
    cancelled = httpx.delete(f"{base}/jobs/{made.json()['id']}", headers=auth)
    assert cancelled.json()["status"] == "cancelled"
    preflight = httpx.options(
        f"{base}/jobs",
        headers={"Origin": "https://app.example", "Access-Control-Request-Method": "POST"},
    )
    assert preflight.headers["access-control-allow-origin"] == "https://app.example"
    api.send_signal(signal.SIGTERM)
    assert api.wait(timeout=15) == 0


def test_run_worker_loop_and_run_scheduler_loop_run_until_sigterm(
    cli: Cli, tmp_path: Path, pg_database: str
) -> None:
    """As ``examples/container_entrypoint.py`` calls them."""
    env = {**cli.env, **DEMO, "ASYNC_JOBS_DB_DSN": pg_database}
    worker = _entrypoint(cli, "worker", env, tmp_path)
    scheduler = _entrypoint(cli, "scheduler", {**env, "ASYNC_JOBS_HANDLERS": ""}, tmp_path)
    wait_for_line(worker, "async-jobs worker ready:")
    wait_for_line(scheduler, "async-jobs scheduler ready:")
    done = cli.run("enqueue", "echo", "--payload", '{"n": 1}', "--wait", "20", **env)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["result"] == {"n": 1}
    for proc in (worker, scheduler):
        proc.send_signal(signal.SIGTERM)
        proc.communicate(timeout=20)
        assert proc.returncode == 0
    # Misconfigured, the entry point exits with a message and status 2, no traceback.
    bad = _entrypoint(cli, "worker", {**env, "ASYNC_JOBS_TRANSPORT": "sqs"}, tmp_path)
    _, stderr = bad.communicate(timeout=30)
    assert bad.returncode == 2 and "no queue is configured" in stderr
    assert "Traceback" not in stderr


def _entrypoint(cli: Cli, role: str, env: dict[str, str], cwd: Path) -> subprocess.Popen[str]:
    example = Path(__file__).resolve().parents[2] / "examples" / "container_entrypoint.py"
    proc = subprocess.Popen(
        [sys.executable, str(example), role],
        env=env,
        cwd=cwd,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    cli.procs.append(proc)  # killed if the test fails
    return proc
