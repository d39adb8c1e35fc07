"""The scheduler and the administration commands as users run them: real processes on
PostgreSQL, ``kill -9`` of the leader, the commands' output and exit codes."""

from __future__ import annotations

import asyncio
import json
import signal
from datetime import UTC, datetime, timedelta

import asyncpg
import httpx
import pytest

from tests.acceptance.conftest import Cli
from tests.acceptance.test_cli import poll, wait_for_line
from tests.helpers import free_port

FAST = {"ASYNC_JOBS_SCHEDULER_INTERVAL_SECONDS": "0.2", "ASYNC_JOBS_LEADER_LEASE_SECONDS": "1.5"}


def _leader(dsn: str) -> str | None:
    async def read() -> str | None:
        conn = await asyncpg.connect(dsn)
        try:
            holder: str | None = await conn.fetchval(
                "SELECT holder FROM async_jobs_leaders WHERE role = 'scheduler'"
            )
            return holder
        finally:
            await conn.close()

    return asyncio.run(read())


def _pid_of(holder: str) -> int:
    return int(holder.split(":")[1])


def test_killing_the_leading_scheduler_hands_over(cli: Cli, pg_database: str) -> None:
    env = {"ASYNC_JOBS_DB_DSN": pg_database, **FAST}
    procs = {}
    for _ in range(3):
        proc = cli.start("scheduler", **env)
        wait_for_line(proc, "scheduler ready")
        procs[proc.pid] = proc
    first = poll(lambda: _leader(pg_database))
    assert isinstance(first, str) and _pid_of(first) in procs

    procs.pop(_pid_of(first)).send_signal(signal.SIGKILL)
    second = poll(lambda: (h := _leader(pg_database)) and h != first and h, timeout=10)
    assert isinstance(second, str) and _pid_of(second) in procs

    # A clean stop resigns at once: the last one standing leads next, with no lease to wait out.
    leader = procs.pop(_pid_of(second))
    leader.send_signal(signal.SIGTERM)
    assert leader.wait(timeout=15) == 0
    [last] = procs.values()
    third = poll(lambda: (h := _leader(pg_database)) and h != second and h, timeout=10)
    assert _pid_of(str(third)) == last.pid
    last.send_signal(signal.SIGTERM)
    assert last.wait(timeout=15) == 0


@pytest.mark.cpu_heavy  # a dozen CLI processes, one after another
def test_use_cases_stats_and_cleanup_commands(cli: Cli, pg_database: str) -> None:
    env = {"ASYNC_JOBS_DB_DSN": pg_database}
    paused = cli.run("use-cases", "pause", "mail", **env)
    assert paused.returncode == 0, paused.stderr
    assert json.loads(paused.stdout)["paused"] is True
    enqueued = cli.run("enqueue", "echo", "--use-case", "mail", "--tenant", "t1", **env)
    assert enqueued.returncode == 0, enqueued.stderr
    listed = json.loads(cli.run("use-cases", "list", **env).stdout)
    assert [(u["name"], u["paused"]) for u in listed] == [("mail", True)]
    worker = cli.run("worker", "--handlers", "async_jobs.demo", "--burst", **env)
    assert worker.returncode == 0, worker.stderr
    stats = json.loads(cli.run("stats", **env).stdout)
    assert stats["counts"] == [
        {"use_case": "mail", "tenant_id": "t1", "status": "pending", "count": 1}
    ]
    assert json.loads(cli.run("use-cases", "resume", "mail", **env).stdout)["paused"] is False
    cli.run("worker", "--handlers", "async_jobs.demo", "--burst", **env)
    stats = json.loads(cli.run("stats", "--tenant", "t1", **env).stdout)
    assert stats["throughput"]["last_minute"]["succeeded"] == 1
    assert stats["run_seconds"]["p50"] is not None
    assert stats["counts"]
    uncounted = json.loads(cli.run("stats", "--tenant", "t1", "--no-counts", **env).stdout)
    assert uncounted["counts"] == []
    assert uncounted["throughput"] == stats["throughput"]

    kept = cli.run("cleanup", "--older-than", "1h", **env)
    assert (kept.returncode, json.loads(kept.stdout)["deleted"]) == (0, 0)
    cleaned = cli.run("cleanup", "--older-than", "0s", **env)
    assert (cleaned.returncode, json.loads(cleaned.stdout)["deleted"]) == (0, 1)
    bad = cli.run("cleanup", "--older-than", "soon", **env)
    assert bad.returncode == 2
    assert "--older-than" in bad.stderr and "Traceback" not in bad.stderr


def test_serve_runs_a_scheduler_that_expires_jobs(cli: Cli, pg_database: str) -> None:
    """`serve` is API, worker and scheduler in one: a job of a paused use case that could
    not start before its expires_at ends cancelled, reason expired."""
    port = free_port()
    env = {"ASYNC_JOBS_DB_DSN": pg_database, **FAST}
    cli.run("migrate", **env)
    assert cli.run("use-cases", "pause", "slow", **env).returncode == 0
    server = cli.start("serve", "--port", str(port), **env)
    wait_for_line(server, "async-jobs serve")
    base = f"http://127.0.0.1:{port}"
    poll(lambda: _answers(f"{base}/health"))
    expires = "2099-01-01T00:00:00+00:00"
    far = httpx.post(
        f"{base}/jobs", json={"type": "echo", "use_case": "slow", "expires_at": expires}
    )
    assert far.status_code == 201, far.text
    soon = httpx.post(
        f"{base}/jobs",
        json={
            "type": "echo",
            "use_case": "slow",
            "expires_at": _seconds_from_now(1),
        },
    )
    assert soon.status_code == 201, soon.text
    job_id = soon.json()["id"]
    ended = poll(
        lambda: (j := httpx.get(f"{base}/jobs/{job_id}").json())["status"] == "cancelled" and j,
        timeout=15,
    )
    assert isinstance(ended, dict) and ended["reason"] == "expired"
    assert httpx.get(f"{base}/jobs/{far.json()['id']}").json()["status"] == "pending"
    server.send_signal(signal.SIGTERM)
    assert server.wait(timeout=30) == 0


def _answers(url: str) -> bool:
    try:
        return httpx.get(url).status_code == 200
    except httpx.HTTPError:
        return False


def _seconds_from_now(seconds: float) -> str:
    return (datetime.now(UTC) + timedelta(seconds=seconds)).isoformat()


def test_workers_lists_live_workers_and_schedulers_leader_first_standby_next(
    cli: Cli, pg_database: str
) -> None:
    env = {"ASYNC_JOBS_DB_DSN": pg_database, **FAST}
    schedulers = [cli.start("scheduler", **env) for _ in range(2)]
    worker = cli.start("worker", "--handlers", "async_jobs.demo", "--concurrency", "3", **env)
    for proc in schedulers:
        wait_for_line(proc, "scheduler ready")
    wait_for_line(worker, "worker ready")
    leader = poll(lambda: _leader(pg_database))

    def listed() -> dict[str, object] | None:
        answer = cli.run("workers", "--json", **env)
        assert answer.returncode == 0, answer.stderr
        listing = json.loads(answer.stdout)
        return listing if len(listing["processes"]) == 3 else None

    listing = poll(listed, timeout=15)
    assert listing is not None
    role, _, leader_id = leader.partition("/")
    assert listing["leader"]["role"] == role and listing["leader"]["id"] == leader_id  # type: ignore[index]
    processes: list[dict[str, object]] = listing["processes"]  # type: ignore[assignment]
    [leading] = [p for p in processes if p["leads"]]  # a scheduler or the worker: one leads
    assert leading["id"] == leader_id
    assert sorted(str(p["kind"]) for p in processes) == ["scheduler", "scheduler", "worker"]
    standbys = [p for p in processes if p["kind"] == "scheduler" and not p["leads"]]
    assert all(p["role"] == "standby" for p in standbys) and len(standbys) >= 1
    [listed_worker] = [p for p in processes if p["kind"] == "worker"]
    assert listed_worker["pid"] == worker.pid and listed_worker["concurrency"] == 3
    table = cli.run("workers", **env)
    assert f"{leading['kind']} (leads)" in table.stdout
    assert f"chores led by {role} {leader_id}" in table.stdout

    for proc in (*schedulers, worker):
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=15) == 0
    after = cli.run("workers", "--json", **env)
    assert json.loads(after.stdout)["processes"] == []  # clean stops remove their records
