"""``async-jobs worker --processes N``: real processes, real PostgreSQL, real signals."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import socket
import subprocess
import sys

import httpx
import psutil
import pytest

from async_jobs import JobApp
from async_jobs.domain.jobs import JobFilter, JobState
from tests.acceptance.conftest import Cli
from tests.acceptance.test_cli import DEMO, poll, wait_for_line
from tests.helpers import free_port

pytestmark = pytest.mark.cpu_heavy


def _ready_ids(proc: subprocess.Popen[str], count: int) -> set[str]:
    ids: list[str] = []
    while len(ids) < count:  # each id of a line: two merged lines would show, not hang
        ids += re.findall(r"worker ready: .*?id=(\S+)", wait_for_line(proc, "worker ready"))
    return set(ids)


def _running_workers(dsn: str) -> dict[str, str | None]:
    async def read() -> dict[str, str | None]:
        async with JobApp(dsn) as app:
            page = await app.store.list_jobs(JobFilter(status=JobState.RUNNING), 100)
            return {str(job.id): job.worker_id for job in page.items}

    return asyncio.run(read())


def _statuses(dsn: str) -> dict[str, int]:
    """Jobs per status; a pending job that never spent an attempt counts as "not started"."""

    async def read() -> dict[str, int]:
        async with JobApp(dsn) as app:
            page = await app.store.list_jobs(JobFilter(), 1000)
            counts: dict[str, int] = {}
            for job in page.items:
                key = job.status.value
                if job.status is JobState.PENDING and job.attempts == 0:
                    key = "not started"  # never claimed, or claimed ahead and handed back
                counts[key] = counts.get(key, 0) + 1
            return counts

    return asyncio.run(read())


def _enqueue_sleeps(dsn: str, count: int, seconds: float) -> None:
    async def enqueue() -> None:
        async with JobApp(dsn) as app:
            for _ in range(count):
                await app.enqueue("sleep", {"seconds": seconds, "message": "m"})

    asyncio.run(enqueue())


def test_n_processes_share_the_work_and_sigterm_stops_them_all_gracefully(
    cli: Cli, pg_database: str
) -> None:
    env = {"ASYNC_JOBS_DB_DSN": pg_database}
    parent = cli.start(
        "worker", "--handlers", DEMO, "--processes", "2", "--concurrency", "2", **env
    )
    ids = _ready_ids(parent, 2)
    assert len(ids) == 2  # two workers of their own
    children = psutil.Process(parent.pid).children()
    assert len(children) == 2

    _enqueue_sleeps(pg_database, 10, 4.0)
    # Each process holds at most twice its --concurrency (2 running, 2 claimed ahead): the
    # ten jobs need both of them.
    poll(lambda: set(_running_workers(pg_database).values()) == ids)

    parent.send_signal(signal.SIGTERM)
    assert parent.wait(30) == 0
    # The running jobs were let finish; a job a worker had claimed ahead of its handlers is
    # handed back without spending an attempt; no worker is left.
    statuses = _statuses(pg_database)
    assert set(statuses) <= {"succeeded", "not started"}, statuses
    assert statuses["succeeded"] >= 2, statuses
    assert not [c for c in children if c.is_running() and c.status() != psutil.STATUS_ZOMBIE]


def test_a_worker_process_that_dies_is_reported_and_started_again(
    cli: Cli, pg_database: str
) -> None:
    env = {"ASYNC_JOBS_DB_DSN": pg_database}
    parent = cli.start("worker", "--handlers", DEMO, "--processes", "2", **env)
    first = _ready_ids(parent, 2)
    victim = psutil.Process(parent.pid).children()[0]
    victim.send_signal(signal.SIGKILL)
    (replacement,) = _ready_ids(parent, 1)
    assert replacement not in first
    assert len(psutil.Process(parent.pid).children()) == 2

    parent.send_signal(signal.SIGTERM)
    _, stderr = parent.communicate(timeout=30)
    assert parent.returncode == 0, stderr
    assert f"(pid {victim.pid}) died of signal SIGKILL; starting it again" in stderr


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux's")
def test_the_workers_stop_when_their_parent_is_killed(cli: Cli, pg_database: str) -> None:
    parent = cli.start(
        "worker", "--handlers", DEMO, "--processes", "2", ASYNC_JOBS_DB_DSN=pg_database
    )
    _ready_ids(parent, 2)
    children = psutil.Process(parent.pid).children()
    parent.kill()  # nothing passes a stop on, and the children are in a session of their own
    parent.wait(10)
    gone, alive = psutil.wait_procs(children, timeout=30)  # stopped by their death signal
    assert (len(gone), alive) == (2, [])


def test_worker_processes_from_the_environment_with_burst(cli: Cli, pg_database: str) -> None:
    env = {"ASYNC_JOBS_DB_DSN": pg_database}
    _enqueue_sleeps(pg_database, 6, 0.05)
    done = cli.run("worker", "--handlers", DEMO, "--burst", ASYNC_JOBS_WORKER_PROCESSES="2", **env)
    assert done.returncode == 0, done.stderr
    assert done.stdout.count("worker ready") == 2
    assert _statuses(pg_database) == {"succeeded": 6}


def test_bad_process_counts_stop_at_start(cli: Cli, pg_database: str) -> None:
    env = {"ASYNC_JOBS_DB_DSN": pg_database}
    zero = cli.run("worker", "--handlers", DEMO, "--processes", "0", **env)
    assert (zero.returncode, zero.stderr.strip()) == (
        2,
        "async-jobs: error: --processes must be at least 1",
    )
    words = cli.run("worker", "--handlers", DEMO, ASYNC_JOBS_WORKER_PROCESSES="many", **env)
    assert words.returncode == 2
    assert "ASYNC_JOBS_WORKER_PROCESSES must be a positive integer" in words.stderr
    assert "Traceback" not in words.stderr


def _free_ports(count: int) -> int:
    """The first of ``count`` consecutive free ports."""
    for _ in range(50):
        first = free_port()
        if first + count - 1 <= 65535 and all(_free(first + i) for i in range(1, count)):
            return first
    raise AssertionError("no run of free ports")


def _free(port: int) -> bool:
    with socket.socket() as probe:
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _metrics_of_ready_lines(proc: subprocess.Popen[str], count: int) -> dict[str, str]:
    """Worker id -> the metrics URL its ready line names."""
    found: dict[str, str] = {}
    while len(found) < count:
        line = wait_for_line(proc, "worker ready")
        found.update(re.findall(r"worker ready: .*?id=(\S+) .*?metrics=(\S+)", line))
    return found


@pytest.mark.parametrize("where", ["variable", "flag"])
def test_each_worker_process_serves_its_metrics_on_a_port_of_its_own(
    cli: Cli, pg_database: str, where: str
) -> None:
    """Port P for process 0, P+1 for process 1: one port can be served by one process only
    (with the variable every process failed to bind it; the flag was dropped)."""
    port = _free_ports(2)
    env = {"ASYNC_JOBS_DB_DSN": pg_database, "ASYNC_JOBS_METRICS_HOST": "127.0.0.1"}
    if where == "variable":
        env["ASYNC_JOBS_METRICS_PORT"] = str(port)
        args = []
    else:
        env["ASYNC_JOBS_METRICS_PORT"] = "nonsense"  # the flag overrides it
        args = ["--metrics-port", str(port)]
    parent = cli.start("worker", "--handlers", DEMO, "--processes", "2", *args, **env)
    urls = _metrics_of_ready_lines(parent, 2)
    assert sorted(urls.values()) == [
        f"http://127.0.0.1:{port}/metrics",
        f"http://127.0.0.1:{port + 1}/metrics",
    ]
    for url in urls.values():
        scraped = httpx.get(url, timeout=5)
        assert scraped.status_code == 200 and "async_jobs_" in scraped.text
    parent.send_signal(signal.SIGTERM)
    _, stderr = parent.communicate(timeout=30)
    assert parent.returncode == 0, stderr


def test_metrics_ports_past_65535_stop_the_command_at_start(cli: Cli, pg_database: str) -> None:
    result = cli.run(
        "worker",
        "--handlers",
        DEMO,
        "--processes",
        "3",
        "--metrics-port",
        "65534",
        timeout=30,
        ASYNC_JOBS_DB_DSN=pg_database,
    )
    assert result.returncode == 2, (result.stdout, result.stderr)
    assert result.stderr.strip().endswith(
        "async-jobs: error: --processes 3 needs the metrics ports 65534 to 65536 (one per "
        "process), past 65535: choose a lower --metrics-port (or ASYNC_JOBS_METRICS_PORT)"
    )
    assert "ready" not in result.stdout


ANNOUNCE_MANY = """
import os, sys
from async_jobs.core.logs import announce, configure_logging
configure_logging(sys.argv[1], "WARNING")
for i in range(3000):
    announce(f"async-jobs worker ready: pid={os.getpid()} id={i}")
"""


@pytest.mark.parametrize("log_format", ["text", "json"])
def test_ready_lines_of_processes_sharing_one_stdout_never_merge(log_format: str) -> None:
    """The processes of ``--processes N`` share the command's stdout. Unbuffered (the
    tests' ``PYTHONUNBUFFERED``, as in many containers), ``print`` wrote a line's text and
    its newline in two writes, and two processes' ready lines merged into one (1,080 of
    6,000 here): a reader waiting for the second one waited for ever."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    read, write = os.pipe()
    try:
        writers = [
            subprocess.Popen(
                [sys.executable, "-c", ANNOUNCE_MANY, log_format], stdout=write, env=env
            )
            for _ in range(2)
        ]
    finally:
        os.close(write)
    with os.fdopen(read, encoding="utf-8") as out:
        lines = out.read().splitlines()
    assert [w.wait(30) for w in writers] == [0, 0]
    assert len(lines) == 6000
    assert [line for line in lines if line.count("worker ready") != 1] == []
