"""RELIABILITY.md's scenarios for the store and the worker: real worker processes, real
PostgreSQL, real signals; assertions on the store and on the execution ledger."""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import signal
import subprocess
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from async_jobs import EnqueueRequest, JobApp, JobState
from tests.acceptance.conftest import Cli
from tests.acceptance.invariants import assert_invariants
from tests.acceptance.ledger_jobs import read_ledger
from tests.acceptance.test_cli import wait_for_line
from tests.helpers import wait_until

REPO = Path(__file__).resolve().parents[2]
HANDLERS = "tests.acceptance.ledger_jobs"


@pytest.fixture
def ledger(tmp_path: Path) -> Path:
    return tmp_path / "ledger.jsonl"


def worker_env(dsn: str, ledger: Path, **extra: str) -> dict[str, str]:
    return {
        "ASYNC_JOBS_DB_DSN": dsn,
        "PYTHONPATH": str(REPO),
        "AJ_TEST_LEDGER": str(ledger),
        "ASYNC_JOBS_POLL_INTERVAL_SECONDS": "0.1",
        **extra,
    }


def start_worker(cli: Cli, env: dict[str, str], *args: str) -> subprocess.Popen[str]:
    proc = cli.start("worker", "--handlers", HANDLERS, *args, **env)
    wait_for_line(proc, "async-jobs worker ready")
    return proc


async def producer(dsn: str) -> JobApp:
    """The producing side, which knows the handlers' defaults (max attempts, backoff)."""
    app = JobApp(dsn, handler_modules=[HANDLERS])
    await app.open()
    return app


async def backdate_running_leases(dsn: str) -> int:
    """Make every running lease look expired now, instead of waiting for it to run out."""
    conn = await asyncpg.connect(dsn)
    try:
        done = await conn.execute(
            "UPDATE async_jobs SET lease_expires_at = now() - interval '1 second' "
            "WHERE status = 'running'"
        )
    finally:
        await conn.close()
    return int(done.split()[-1])


def starts_of(ledger: Path, job_id: Any) -> list[dict[str, Any]]:
    return [e for e in read_ledger(ledger) if e["event"] == "start" and e["job"] == str(job_id)]


async def exited(proc: subprocess.Popen[str]) -> bool:
    return proc.poll() is not None


async def test_a_worker_killed_mid_job_is_finished_by_another(
    cli: Cli, pg_database: str, ledger: Path
) -> None:
    app = await producer(pg_database)
    try:
        job = await app.enqueue("work", {"hang_on_attempt": 1, "n": 1})
        env = worker_env(pg_database, ledger)
        first = start_worker(cli, env)
        await wait_until(lambda: starts_of(ledger, job.id), timeout=20)
        first.send_signal(signal.SIGKILL)
        first.wait(10)
        assert (await app.get_job(job.id)).status is JobState.RUNNING

        assert await backdate_running_leases(pg_database) == 1
        reaped = cli.run("reap", **env)
        assert reaped.returncode == 0, reaped.stderr
        assert "reaped 1 " in reaped.stdout
        second = cli.run("worker", "--handlers", HANDLERS, "--burst", **env)
        assert second.returncode == 0, second.stderr

        done = await app.get_job(job.id)
        assert (done.status, done.attempts) == (JobState.SUCCEEDED, 2)
        assert done.result == {"n": 1, "attempt": 2}
        assert [h.outcome for h in done.history] == ["worker_lost"]
        assert len({e["pid"] for e in starts_of(ledger, job.id)}) == 2
        await assert_invariants(pg_database, ledger, {str(job.id)})
    finally:
        await app.close()


async def test_a_handler_that_always_raises_gets_exactly_max_attempts(
    cli: Cli, pg_database: str, ledger: Path
) -> None:
    app = await producer(pg_database)
    try:
        job = await app.enqueue("always_raises")  # max 3 attempts, constant 0.6 s, jitter 0.5
        proc = start_worker(cli, worker_env(pg_database, ledger))

        async def failed() -> bool:
            return (await app.get_job(job.id)).status is JobState.FAILED

        await wait_until(failed, timeout=30)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(20) == 0
        done = await app.get_job(job.id)
        assert done.attempts == 3
        assert [h.outcome for h in done.history] == ["retry", "retry", "failed"]
        assert done.error is not None and done.error.message == "attempt 3 failed"
        starts = starts_of(ledger, job.id)
        assert [e["attempt"] for e in starts] == [1, 2, 3]
        for before, after in itertools.pairwise(starts):
            gap = after["t"] - before["t"]
            # backoff in [0.3, 0.6] s; a retry is found by the next poll (0.1 s) or sooner
            assert 0.29 <= gap <= 0.6 + 0.5, gap
        await assert_invariants(pg_database, ledger, {str(job.id)})
    finally:
        await app.close()


async def test_a_handler_that_exits_its_process_ends_failed_while_others_go_on(
    cli: Cli, pg_database: str, ledger: Path
) -> None:
    app = await producer(pg_database)
    try:
        poison = await app.enqueue("exits_process")  # max 2 attempts
        others = await app.enqueue_many(
            [EnqueueRequest("work", {"n": n, "seconds": 0.01}) for n in range(20)]
        )
        env = worker_env(pg_database, ledger)
        # A supervisor's loop: run a worker; when it dies, expire what it held and reap.
        for _ in range(10):
            proc = cli.start(
                "worker", "--handlers", HANDLERS, "--burst", "--concurrency", "2", **env
            )
            await wait_until(lambda p=proc: exited(p), timeout=30)
            if proc.returncode == 0 and (await app.get_job(poison.id)).status.is_terminal:
                break
            assert proc.returncode == 17, proc.communicate()[1]
            await backdate_running_leases(pg_database)
            assert cli.run("reap", **env).returncode == 0
        done = await app.get_job(poison.id)
        assert (done.status, done.attempts, done.reason) == (JobState.FAILED, 2, "worker_lost")
        assert [h.outcome for h in done.history] == ["worker_lost", "worker_lost"]
        assert len(starts_of(ledger, poison.id)) == 2
        for other in others:
            assert (await app.get_job(other.id)).status is JobState.SUCCEEDED
        accepted = {str(poison.id), *(str(o.id) for o in others)}
        await assert_invariants(pg_database, ledger, accepted)
    finally:
        await app.close()


async def test_sigterm_finishes_the_running_job_and_hands_back_the_claimed_one(
    cli: Cli, pg_database: str, ledger: Path
) -> None:
    app = await producer(pg_database)
    try:
        # Concurrency 1 with a prefetch of 1: one job runs, the next waits claimed.
        jobs = await app.enqueue_many(
            [EnqueueRequest("work", {"n": n, "seconds": 1.5}) for n in range(2)]
        )
        proc = start_worker(cli, worker_env(pg_database, ledger), "--concurrency", "1")

        async def one_running_one_claimed() -> bool:
            states = [(await app.get_job(j.id)).status for j in jobs]
            return states.count(JobState.RUNNING) == 2 and len(read_ledger(ledger)) == 1

        await wait_until(one_running_one_claimed, timeout=20)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0
        started = read_ledger(ledger)[0]["job"]
        by_id = {str(j.id): await app.get_job(j.id) for j in jobs}
        ran = by_id.pop(started)
        [(_, waited)] = by_id.items()
        assert (ran.status, ran.attempts) == (JobState.SUCCEEDED, 1)
        # Claimed but never started: back to pending at once, its attempt not spent.
        assert (waited.status, waited.attempts, waited.lease_token) == (
            JobState.PENDING,
            0,
            None,
        )
        await assert_invariants(pg_database, ledger, {started}, all_terminal=False)
    finally:
        await app.close()


async def test_sigterm_past_the_grace_period_releases_the_running_job_unspent(
    cli: Cli, pg_database: str, ledger: Path
) -> None:
    app = await producer(pg_database)
    try:
        job = await app.enqueue("work", {"seconds": 60})
        proc = start_worker(cli, worker_env(pg_database, ledger), "--grace", "0.5")
        await wait_until(lambda: starts_of(ledger, job.id), timeout=20)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(20) == 0
        back = await app.get_job(job.id)
        assert (back.status, back.attempts, back.history) == (JobState.PENDING, 0, [])
    finally:
        await app.close()


async def test_a_second_sigterm_stops_at_once(cli: Cli, pg_database: str, ledger: Path) -> None:
    app = await producer(pg_database)
    try:
        job = await app.enqueue("work", {"seconds": 60})
        proc = start_worker(cli, worker_env(pg_database, ledger), "--grace", "60")
        await wait_until(lambda: starts_of(ledger, job.id), timeout=20)
        proc.send_signal(signal.SIGTERM)
        await wait_until(lambda: "waiting up to" in _drain_stderr(proc), timeout=20)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(15) == 0
        back = await app.get_job(job.id)
        assert (back.status, back.attempts) == (JobState.PENDING, 0)
    finally:
        await app.close()


_seen_stderr: dict[int, str] = {}


def _drain_stderr(proc: subprocess.Popen[str]) -> str:
    """What the process wrote to stderr so far (reads without blocking)."""
    assert proc.stderr is not None
    fd = proc.stderr.fileno()
    os.set_blocking(fd, False)
    try:
        chunk = os.read(fd, 65536).decode(errors="replace")
    except BlockingIOError:
        chunk = ""
    _seen_stderr[proc.pid] = _seen_stderr.get(proc.pid, "") + chunk
    return _seen_stderr[proc.pid]


async def test_fifty_concurrent_enqueues_with_one_key_make_one_job(pg_database: str) -> None:
    apps = [JobApp(pg_database, strict_types=False) for _ in range(5)]
    for app in apps:
        await app.open()
    try:
        request = EnqueueRequest("work", {"n": 1}, idempotency_key="one-key")
        answers = await asyncio.gather(*(apps[i % 5].enqueue_checked(request) for i in range(50)))
        assert len({job.id for job, _ in answers}) == 1
        assert sum(created for _, created in answers) == 1
        conn = await asyncpg.connect(pg_database)
        try:
            assert await conn.fetchval("SELECT count(*) FROM async_jobs") == 1
        finally:
            await conn.close()
    finally:
        for app in apps:
            await app.close()


async def test_a_rolled_back_first_insert_leaves_the_key_to_the_next(pg_database: str) -> None:
    app = JobApp(pg_database, strict_types=False)
    async with app:
        caller = await asyncpg.connect(pg_database)
        try:
            transaction = caller.transaction()
            await transaction.start()
            first = await app.enqueue("work", {"n": 1}, idempotency_key="k", connection=caller)
            # The second insert waits on the first one's uncommitted row ...
            second = asyncio.create_task(
                app.enqueue_checked(EnqueueRequest("work", {"n": 1}, idempotency_key="k"))
            )
            done, _ = await asyncio.wait({second}, timeout=0.3)
            assert not done, "the second insert must wait for the first transaction"
            # ... which rolls back: the key is free, and the second insert takes it.
            await transaction.rollback()
            job, created = await asyncio.wait_for(second, 10)
            assert created and job.id != first.id
        finally:
            await caller.close()
        page = await app.list_jobs()
        assert [j.id for j in page.items] == [job.id]


async def test_transactional_enqueue_runs_only_what_was_committed(pg_database: str) -> None:
    app = JobApp(pg_database, strict_types=False)
    async with app:
        caller = await asyncpg.connect(pg_database)
        try:
            async with caller.transaction():
                kept = await app.enqueue("work", {"n": "kept"}, connection=caller)
                assert await app.store.get_job(kept.id) is None  # not visible before commit
            try:
                async with caller.transaction():
                    dropped = await app.enqueue("work", {"n": "dropped"}, connection=caller)
                    raise RuntimeError("the caller's own work failed")
            except RuntimeError:
                pass
            many = await app.enqueue_many(
                [EnqueueRequest("work", {"n": i}) for i in range(3)], connection=caller
            )
        finally:
            await caller.close()
        assert (await app.get_job(kept.id)).status is JobState.PENDING
        assert await app.store.get_job(dropped.id) is None
        for job in many:
            assert await app.store.get_job(job.id) is not None


async def test_transactional_enqueue_with_a_sqlalchemy_session(pg_database: str) -> None:
    from sqlalchemy import text
    from sqlalchemy.ext.asyncio import AsyncSession, create_async_engine

    engine = create_async_engine(pg_database.replace("postgresql://", "postgresql+asyncpg://"))
    app = JobApp(pg_database, strict_types=False)
    try:
        async with app:
            async with AsyncSession(engine) as session:
                async with session.begin():
                    await session.execute(text("CREATE TABLE orders (id int)"))
                    await session.execute(text("INSERT INTO orders VALUES (1)"))
                    kept = await app.enqueue("work", {"order": 1}, connection=session)
                async with session.begin():
                    dropped = await app.enqueue("work", {"order": 2}, connection=session)
                    await session.rollback()
                # Idempotency inside the caller's transaction returns the same job.
                async with session.begin():
                    again = await app.enqueue(
                        "work", {"order": 1}, idempotency_key="o1", connection=session
                    )
                    same = await app.enqueue(
                        "work", {"order": 1}, idempotency_key="o1", connection=session
                    )
                    assert same.id == again.id and same.payload == {"order": 1}
            assert (await app.get_job(kept.id)).payload == {"order": 1}
            assert await app.store.get_job(dropped.id) is None
            assert await app.store.get_job(again.id) is not None
    finally:
        await engine.dispose()


async def test_transactional_enqueue_refuses_what_it_cannot_use(tmp_path: Path) -> None:
    from async_jobs import ConfigurationError

    app = JobApp(f"sqlite:///{tmp_path / 'jobs.db'}", strict_types=False)
    async with app:
        await app.migrate()
        with pytest.raises(ConfigurationError, match="PostgreSQL"):
            await app.enqueue("work", connection=object())


@pytest.mark.cpu_heavy  # a dozen CLI processes, one after another
def test_cli_cancels_and_retries_jobs(cli: Cli, pg_database: str) -> None:
    env = {"ASYNC_JOBS_DB_DSN": pg_database}
    job = json.loads(cli.run("enqueue", "echo", "--delay", "3600", **env).stdout)
    cancelled = cli.run("jobs", "cancel", job["id"], **env)
    assert cancelled.returncode == 0, cancelled.stderr
    assert json.loads(cancelled.stdout)["status"] == "cancelled"
    again = cli.run("jobs", "cancel", job["id"], **env)
    assert again.returncode == 1 and "already ended" in again.stderr
    retried = cli.run("jobs", "retry", job["id"], **env)
    assert retried.returncode == 0, retried.stderr
    body = json.loads(retried.stdout)
    assert (body["status"], body["reason"]) == ("pending", "manual_retry")
    refused = cli.run("jobs", "retry", job["id"], **env)
    assert refused.returncode == 1
    assert "only failed or cancelled jobs" in refused.stderr
    assert "Traceback" not in refused.stderr
    shown = cli.run("jobs", "show", job["id"], **env)
    assert json.loads(shown.stdout)["id"] == job["id"]
    missing = cli.run("jobs", "get", "not-a-job", **env)
    assert missing.returncode == 1 and "no job" in missing.stderr
    listed = cli.run("jobs", "list", "--status", "pending", **env)
    assert [j["id"] for j in json.loads(listed.stdout)] == [job["id"]]
    by_priority = cli.run("jobs", "list", "--priority", "medium", **env)
    assert [j["id"] for j in json.loads(by_priority.stdout)] == [job["id"]]
    none = cli.run("jobs", "list", "--priority", "critical", **env)
    assert json.loads(none.stdout) == []
    bad = cli.run("jobs", "list", "--priority", "urgent", **env)
    assert bad.returncode == 2 and "Traceback" not in bad.stderr
