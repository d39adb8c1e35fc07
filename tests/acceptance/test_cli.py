"""The CLI as users run it: real processes, real PostgreSQL and SQLite, real signals."""

from __future__ import annotations

import contextlib
import json
import signal
import socket
import subprocess
import threading
import time
from pathlib import Path

import httpx
import psutil
import pytest

from tests.acceptance.conftest import Cli
from tests.helpers import free_port

DEMO = "async_jobs.demo"


def wait_for_line(proc: subprocess.Popen[str], needle: str, timeout: float = 20) -> str:
    """Read the process's stdout until a line contains ``needle``. When none has come within
    ``timeout`` the process is killed, with the processes it started (they share its pipes),
    and the test fails with its stderr: a process that prints nothing more would otherwise
    block the read until pytest's own timeout, with nothing to show."""
    assert proc.stdout is not None
    watchdog = threading.Timer(timeout, _kill_tree, (proc.pid,))
    watchdog.start()
    try:
        while True:
            line = proc.stdout.readline()
            if needle in line:
                return line
            if not line and proc.poll() is not None:
                break
    finally:
        watchdog.cancel()
    timed_out = f" (killed after {timeout} s)" if watchdog.finished.is_set() else ""
    raise AssertionError(
        f"no line with {needle!r}{timed_out}; stderr: {proc.stderr.read() if proc.stderr else ''}"
    )


def _kill_tree(pid: int) -> None:
    with contextlib.suppress(psutil.NoSuchProcess):
        parent = psutil.Process(pid)
        for proc in [*parent.children(recursive=True), parent]:
            with contextlib.suppress(psutil.NoSuchProcess):
                proc.kill()


def poll(check: object, timeout: float = 20, interval: float = 0.05) -> object:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()  # type: ignore[operator]
        if value:
            return value
        time.sleep(interval)  # wait-ok: polling interval of a deadline-bound wait
    raise AssertionError("condition not met in time")


def test_migrate_is_safe_to_run_twice(cli: Cli, empty_pg_database: str) -> None:
    first = cli.run("migrate", ASYNC_JOBS_DB_DSN=empty_pg_database)
    second = cli.run("migrate", ASYNC_JOBS_DB_DSN=empty_pg_database)
    assert (first.returncode, second.returncode) == (0, 0), first.stderr
    assert "0001_initial" in first.stdout
    assert "up to date" in second.stdout


def test_enqueue_then_a_burst_worker_runs_it_on_postgres(cli: Cli, pg_database: str) -> None:
    env = {"ASYNC_JOBS_DB_DSN": pg_database}
    enqueued = cli.run(
        "enqueue", "echo", "--payload", '{"to": "a@b.c"}', "--priority", "high", **env
    )
    assert enqueued.returncode == 0, enqueued.stderr
    job = json.loads(enqueued.stdout)
    assert (job["status"], job["priority"], job["payload"]) == ("pending", "high", {"to": "a@b.c"})
    worker = cli.run("worker", "--handlers", DEMO, "--burst", "--concurrency", "5", **env)
    assert worker.returncode == 0, worker.stderr
    assert "worker ready" in worker.stdout
    assert _job_status(cli, env, job["id"]) == "succeeded"
    pending = cli.run("enqueue", "say_hello", "--wait", "0", **env)
    assert pending.returncode == 3  # no worker runs now: still pending when the wait ends


def test_enqueue_wait_prints_the_final_job(cli: Cli, pg_database: str) -> None:
    env = {"ASYNC_JOBS_DB_DSN": pg_database}
    worker = cli.start("worker", "--handlers", DEMO, **env)
    wait_for_line(worker, "worker ready")
    result = cli.run(
        "enqueue", "sleep", "--payload", '{"seconds": 0.1, "message": "m"}', "--wait", "20", **env
    )
    assert result.returncode == 0, result.stderr
    job = json.loads(result.stdout)
    assert job["status"] == "succeeded"
    assert job["result"] == {"slept_seconds": 0.1, "message": "m"}
    failing = cli.run("enqueue", "fail", "--max-attempts", "1", "--wait", "20", **env)
    assert failing.returncode == 1
    assert json.loads(failing.stdout)["status"] == "failed"
    worker.send_signal(signal.SIGTERM)
    assert worker.wait(20) == 0


def test_sigterm_lets_the_running_job_finish_and_exits_zero(cli: Cli, pg_database: str) -> None:
    env = {"ASYNC_JOBS_DB_DSN": pg_database}
    worker = cli.start("worker", "--handlers", DEMO, "--concurrency", "2", **env)
    wait_for_line(worker, "worker ready")
    job = json.loads(
        cli.run("enqueue", "sleep", "--payload", '{"seconds": 1.5, "message": "x"}', **env).stdout
    )

    poll(lambda: _job_status(cli, env, job["id"]) == "running")
    worker.send_signal(signal.SIGTERM)
    assert worker.wait(30) == 0
    assert _job_status(cli, env, job["id"]) == "succeeded"


def _job_status(cli: Cli, env: dict[str, str], job_id: str) -> str:
    import asyncio

    from async_jobs import JobApp

    async def read() -> str:
        async with JobApp(env["ASYNC_JOBS_DB_DSN"]) as app:
            return (await app.get_job(job_id)).status.value

    return asyncio.run(read())


def test_serve_on_sqlite_runs_the_quick_start(cli: Cli, tmp_path: Path) -> None:
    port = free_port()
    server = cli.start("serve", "--port", str(port))
    wait_for_line(server, f"http://127.0.0.1:{port}")
    base = f"http://127.0.0.1:{port}"
    socket.create_connection(("127.0.0.1", port), timeout=2).close()  # the line means listening
    assert _get(f"{base}/health") == 200
    created = httpx.post(
        f"{base}/jobs", json={"type": "sleep", "payload": {"seconds": 2, "message": "hello world"}}
    )
    assert created.status_code == 201
    job_id = created.json()["id"]
    assert created.json()["status"] == "pending"
    poll(lambda: httpx.get(f"{base}/jobs/{job_id}").json()["status"] == "running", timeout=10)
    poll(lambda: httpx.get(f"{base}/jobs/{job_id}").json()["status"] == "succeeded", timeout=20)
    job = httpx.get(f"{base}/jobs/{job_id}").json()
    assert job["result"] == {"slept_seconds": 2, "message": "hello world"}
    listing = httpx.get(f"{base}/jobs?limit=10").json()
    assert [item["id"] for item in listing["items"]] == [job_id]
    assert (tmp_path / "async_jobs.db").exists()
    server.send_signal(signal.SIGTERM)
    assert server.wait(30) == 0


def _get(url: str) -> int:
    try:
        return httpx.get(url, timeout=2).status_code
    except httpx.HTTPError:
        return 0


@pytest.mark.parametrize(
    ("env", "args", "code", "message"),
    [
        ({"ASYNC_JOBS_DB_DSN": "mysql://x/y"}, ["migrate"], 2, "must start with"),
        (
            {"ASYNC_JOBS_DB_DSN": "postgresql://postgres@127.0.0.1:1/x"},
            ["migrate"],
            1,
            "cannot reach PostgreSQL",
        ),
        (
            # One attempt, no retry window (test_startup covers the window itself).
            {
                "ASYNC_JOBS_DB_DSN": "postgresql://postgres@127.0.0.1:1/x",
                "ASYNC_JOBS_STORE_WAIT_SECONDS": "0",
            },
            ["worker", "--handlers", DEMO],
            1,
            "cannot reach PostgreSQL",
        ),
        ({}, ["worker"], 2, "no job handlers"),
        ({}, ["worker", "--handlers", "no_such_module"], 2, "cannot import"),
        ({}, ["enqueue", "echo", "--payload", "[1]"], 2, "payload must be a JSON object"),
        ({}, ["enqueue", "echo", "--payload", "{bad"], 2, "not valid JSON"),
        ({}, ["enqueue", "echo", "--delay", "-3"], 2, "argument --delay: must be"),
        ({}, ["enqueue", "echo", "--delay", "1e8"], 2, "delay_seconds"),  # the domain's limit
        ({"ASYNC_JOBS_TRANSPORT": "carrier-pigeon"}, ["migrate"], 2, "TRANSPORT"),
    ],
)
def test_bad_input_gives_a_message_and_an_exit_code(
    cli: Cli, env: dict[str, str], args: list[str], code: int, message: str
) -> None:
    result = cli.run(*args, **env)
    assert result.returncode == code, result.stderr
    assert message in result.stderr
    assert "Traceback" not in result.stderr


def test_with_json_logs_every_result_is_one_json_line(cli: Cli, tmp_path: Path) -> None:
    env = {
        "ASYNC_JOBS_DB_DSN": f"sqlite:///{tmp_path / 'jobs.db'}",
        "ASYNC_JOBS_LOG_FORMAT": "json",
    }
    assert cli.run("migrate", **env).returncode == 0
    enqueued = cli.run("enqueue", "echo", "--payload", '{"n": 1}', **env)
    listed = cli.run("jobs", "list", **env)
    stats = cli.run("stats", **env)
    indented = cli.run("stats", ASYNC_JOBS_DB_DSN=env["ASYNC_JOBS_DB_DSN"])
    for result in (enqueued, listed, stats):
        assert result.returncode == 0, result.stderr
        lines = result.stdout.splitlines()
        assert lines and all(isinstance(json.loads(line), (dict, list)) for line in lines)
    (job,) = json.loads(listed.stdout.splitlines()[-1])
    assert job["id"] == json.loads(enqueued.stdout.splitlines()[-1])["id"]
    assert len(indented.stdout.splitlines()) > 1  # text logs: indented for people
    assert json.loads(indented.stdout).keys() == json.loads(stats.stdout.splitlines()[-1]).keys()


@pytest.mark.parametrize(
    "args",
    [
        ["enqueue", "echo", "--wait", "nan"],
        ["enqueue", "echo", "--wait", "-1"],
        ["enqueue", "echo", "--delay", "inf"],
        ["worker", "--handlers", DEMO, "--grace", "nan"],
        ["worker", "--handlers", DEMO, "--processes", "2", "--grace", "nan"],
        ["worker", "--handlers", DEMO, "--reap-interval", "inf"],
    ],
    ids=["wait-nan", "wait-negative", "delay-inf", "grace-nan", "processes-grace-nan", "reap-inf"],
)
def test_a_number_that_is_not_finite_and_non_negative_stops_the_command_before_it_acts(
    cli: Cli, tmp_path: Path, args: list[str]
) -> None:
    """``nan`` passed every check and broke later: a worker's shutdown (the job left running,
    or both processes killed), an enqueue that stored its job and then died."""
    env = {"ASYNC_JOBS_DB_DSN": f"sqlite:///{tmp_path / 'jobs.db'}"}
    assert cli.run("migrate", **env).returncode == 0
    result = cli.run(*args, timeout=30, **env)
    assert result.returncode == 2, (result.stdout, result.stderr)
    error = result.stderr.splitlines()[-1]
    assert error == (
        f"async-jobs: error: argument {args[-2]}: must be a non-negative number up to "
        f"1000000000, not {args[-1]!r}"
    )
    assert "Traceback" not in result.stderr and "ready" not in result.stdout
    listed = cli.run("jobs", "list", **env)
    assert json.loads(listed.stdout) == []  # nothing was stored


@pytest.mark.parametrize("port", ["99999", "-1", "0"])
def test_a_port_out_of_range_stops_the_api_at_start(cli: Cli, tmp_path: Path, port: str) -> None:
    env = {"ASYNC_JOBS_DB_DSN": f"sqlite:///{tmp_path / 'jobs.db'}"}
    result = cli.run("api", "--port", port, timeout=30, **env)
    assert result.returncode == 2, (result.stdout, result.stderr)
    assert result.stderr.splitlines()[-1] == (
        f"async-jobs: error: argument --port: must be a whole number from 1 to 65535, not {port!r}"
    )
    assert "async-jobs api:" not in result.stdout


@pytest.mark.parametrize("command", ["serve", "api"])
def test_a_port_in_use_is_a_configuration_error_before_anything_starts(
    cli: Cli, tmp_path: Path, command: str
) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = cli.run(command, "--port", str(port), timeout=30)
    assert result.returncode == 2, (result.stdout, result.stderr)
    assert result.stderr.splitlines()[-1].startswith(
        f"async-jobs: error: cannot listen on 127.0.0.1:{port} (--host/--port, "
        "ASYNC_JOBS_API_HOST/ASYNC_JOBS_API_PORT): "
    )
    assert "Traceback" not in result.stderr and "uvicorn" not in result.stderr
    assert not (tmp_path / "async_jobs.db").exists()  # the store was not even opened


def test_a_host_name_that_cannot_be_encoded_is_a_configuration_error(cli: Cli) -> None:
    result = cli.run("api", "--host", "a" * 64 + ".example", timeout=30)  # a label over 63
    assert result.returncode == 2, (result.stdout, result.stderr)
    assert "async-jobs: error: cannot listen on " in result.stderr
    assert "Traceback" not in result.stderr


def test_a_flag_overrides_a_bad_value_of_its_variable(cli: Cli, tmp_path: Path) -> None:
    env = {"ASYNC_JOBS_DB_DSN": f"sqlite:///{tmp_path / 'jobs.db'}"}
    bad = {"ASYNC_JOBS_LOG_LEVEL": "verbose", "ASYNC_JOBS_API_PORT": "99999"}
    assert cli.run("migrate", **env, **bad).returncode == 2  # the variable alone: refused
    migrated = cli.run("--log-level", "debug", "migrate", **env, ASYNC_JOBS_LOG_LEVEL="verbose")
    assert migrated.returncode == 0, migrated.stderr
    port = free_port()
    api = cli.start("api", "--log-level", "warning", "--port", str(port), **env, **bad)
    assert f"http://127.0.0.1:{port} " in wait_for_line(api, "async-jobs api:")
    api.send_signal(signal.SIGTERM)
    assert api.wait(15) == 0


def test_enqueue_without_a_use_case_takes_the_default_use_case_tolerance(
    cli: Cli, tmp_path: Path
) -> None:
    env = {
        "ASYNC_JOBS_DB_DSN": f"sqlite:///{tmp_path / 'jobs.db'}",
        "ASYNC_JOBS_DEFAULT_DEFAULT_DELAY_TOLERANCE_SECONDS": "77",
    }
    assert cli.run("migrate", **env).returncode == 0
    for args in ([], ["--use-case", "default"]):
        enqueued = cli.run("enqueue", "echo", *args, **env)
        assert enqueued.returncode == 0, enqueued.stderr
        job = json.loads(enqueued.stdout)
        assert (job["use_case"], job["delay_tolerance_seconds"]) == ("default", 77), args
