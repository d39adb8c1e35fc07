"""RELIABILITY.md promise 9, "outages are survivable", for PostgreSQL: real worker and server
processes on a private PostgreSQL cluster that the test stops and starts (``pg_ctl stop -m
fast`` terminates every session, as a real restart does), and a worker whose connections are
terminated while it records an outcome. Assertions are on the store and the execution ledger
the handlers write, then on the global invariants."""

from __future__ import annotations

import asyncio
import collections
import signal
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest

from async_jobs import (
    EnqueueRequest,
    JobApp,
    JobContext,
    JobState,
    StoreUnavailableError,
    WorkerConfig,
)
from async_jobs.domain.jobs import AttemptOutcome
from tests.acceptance.conftest import Cli
from tests.acceptance.invariants import assert_invariants
from tests.acceptance.ledger_jobs import read_ledger
from tests.acceptance.private_pg import PrivatePostgres
from tests.acceptance.test_cli import wait_for_line
from tests.helpers import free_port, terminate_other_backends, wait_until

REPO = Path(__file__).resolve().parents[2]
HANDLERS = "tests.acceptance.ledger_jobs"
LEASE_SECONDS = 3.0

pytestmark = pytest.mark.cpu_heavy


@pytest.fixture
def private_pg() -> Iterator[PrivatePostgres]:
    """A private, migrated PostgreSQL cluster that this test may stop and start; stopped and
    removed afterwards, whatever happened."""
    cluster = PrivatePostgres()
    try:
        cluster.create()
        yield cluster
    finally:
        cluster.close()


@pytest.fixture
def ledger(tmp_path: Path) -> Path:
    return tmp_path / "ledger.jsonl"


class Process:
    """A CLI process whose stderr goes to a file (read at any time, never a full pipe)."""

    def __init__(self, cli: Cli, log: Path, *args: str, **env: str) -> None:
        self.log = log
        with log.open("w", encoding="utf-8") as stderr:
            self.popen: subprocess.Popen[str] = subprocess.Popen(
                [sys.executable, "-m", "async_jobs", *args],
                env={**cli.env, **env},
                cwd=cli.cwd,
                stdout=subprocess.PIPE,
                stderr=stderr,
                text=True,
            )
        cli.procs.append(self.popen)  # killed by the fixture should the test fail

    def stderr(self) -> str:
        return self.log.read_text(errors="replace")

    def alive(self) -> bool:
        return self.popen.poll() is None

    def wait_for_line(self, needle: str) -> str:
        try:
            return wait_for_line(self.popen, needle)
        except AssertionError as exc:
            raise AssertionError(f"{exc}\nstderr:\n{self.stderr()[-3000:]}") from None

    def terminate(self, timeout: float = 30) -> int:
        self.popen.send_signal(signal.SIGTERM)
        try:
            return self.popen.wait(timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(
                f"no exit within {timeout}s of SIGTERM; stderr:\n{self.stderr()[-3000:]}"
            ) from None


def process_env(dsn: str, ledger: Path, lease_seconds: float = LEASE_SECONDS) -> dict[str, str]:
    return {
        "ASYNC_JOBS_DB_DSN": dsn,
        "PYTHONPATH": str(REPO),
        "AJ_TEST_LEDGER": str(ledger),
        "ASYNC_JOBS_POLL_INTERVAL_SECONDS": "0.2",
        "ASYNC_JOBS_LEASE_SECONDS": str(lease_seconds),
    }


async def stays_alive(proc: Process, seconds: float) -> bool:
    """True when the process is still running after ``seconds``, checked all along."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + seconds
    while loop.time() < deadline:
        if not proc.alive():
            return False
        await asyncio.sleep(0.05)  # wait-ok: polling interval of a deadline-bound check
    return proc.alive()


async def count_by_status(dsn: str) -> dict[str, int] | None:
    """Jobs per status, or None while the database does not answer."""
    try:
        conn = await asyncpg.connect(dsn, timeout=5)
    except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError, TimeoutError):
        return None
    try:
        rows = await conn.fetch("SELECT status::text, count(*) FROM async_jobs GROUP BY 1")
    finally:
        await conn.close()
    return {r["status"]: r["count"] for r in rows}


def events(ledger: Path, event: str) -> collections.Counter[str]:
    return collections.Counter(e["job"] for e in read_ledger(ledger) if e["event"] == event)


@pytest.mark.parametrize(
    ("lease_seconds", "down_seconds", "most_runs"),
    [
        # Shorter than a lease: the worker keeps its claims, renews them once the store is
        # back, and writes the outcomes it held: every job ran exactly once.
        pytest.param(10.0, 1.5, 1, id="shorter-than-a-lease"),
        # Longer than a lease: the worker stops the handlers whose leases it could not renew
        # (another worker may own them now); those jobs run again, once.
        pytest.param(LEASE_SECONDS, LEASE_SECONDS + 0.5, 2, id="longer-than-a-lease"),
    ],
)
async def test_postgres_restarted_under_load_loses_nothing(
    cli: Cli,
    private_pg: PrivatePostgres,
    ledger: Path,
    tmp_path: Path,
    lease_seconds: float,
    down_seconds: float,
    most_runs: int,
) -> None:
    total = 300
    dsn = private_pg.dsn
    async with JobApp(dsn) as producer:
        jobs = await producer.enqueue_many(
            [EnqueueRequest("work", {"n": n, "seconds": 0.05}) for n in range(total)]
        )
    accepted = {str(j.id) for j in jobs}
    assert len(accepted) == total

    worker = Process(
        cli,
        tmp_path / "worker.stderr",
        "worker", "--handlers", HANDLERS, "--concurrency", "10",
        **process_env(dsn, ledger, lease_seconds),
    )  # fmt: skip
    worker.wait_for_line("async-jobs worker ready")
    await wait_until(lambda: sum(events(ledger, "end").values()) >= 30, timeout=20)

    private_pg.stop()  # under load: sessions terminated, new connections refused
    ended_before_outage = set(events(ledger, "end"))
    done_at_stop = len(ended_before_outage)
    assert done_at_stop < total, "the worker finished everything before the outage began"

    assert await stays_alive(worker, down_seconds), worker.stderr()[-3000:]
    fetch_failures = worker.stderr().count("cannot fetch jobs")
    # It noticed, and retried with backoff rather than in a tight loop.
    assert 2 <= fetch_failures <= 30, (fetch_failures, worker.stderr()[-3000:])
    assert len(events(ledger, "start")) < total  # nothing can be claimed while it is down

    private_pg.start()

    async def all_succeeded() -> bool:
        counts = await count_by_status(dsn)
        return counts == {"succeeded": total}

    try:
        await wait_until(all_succeeded, timeout=40, interval=0.1)
    except AssertionError:
        raise AssertionError(
            f"not all jobs succeeded: {await count_by_status(dsn)}; worker alive: "
            f"{worker.alive()}; stderr:\n{worker.stderr()[-4000:]}"
        ) from None
    assert worker.terminate() == 0, worker.stderr()[-3000:]

    rows = await assert_invariants(dsn, ledger, accepted)
    assert len(rows) == total
    starts = events(ledger, "start")
    assert set(starts) == accepted
    assert max(starts.values()) <= most_runs, starts.most_common(3)
    assert max(r["attempts"] for r in rows) <= most_runs
    assert events(ledger, "end").keys() == accepted
    # A job whose handler had finished is never run again: its outcome, held while the
    # store was down, is written (the worker keeps renewing its lease) instead of the job
    # being reaped as a lost worker's.
    assert all(starts[job_id] == 1 for job_id in ended_before_outage), starts.most_common(3)


async def test_serve_stays_up_and_answers_503_while_postgres_is_down(
    cli: Cli, private_pg: PrivatePostgres, ledger: Path, tmp_path: Path
) -> None:
    port = free_port()
    server = Process(
        cli,
        tmp_path / "serve.stderr",
        "serve", "--port", str(port), "--handlers", HANDLERS,
        **process_env(private_pg.dsn, ledger),
    )  # fmt: skip
    base = f"http://127.0.0.1:{port}"
    async with httpx.AsyncClient(base_url=base, timeout=15) as http:

        async def healthy() -> bool:
            try:
                return (await http.get("/health")).status_code == 200
            except httpx.TransportError:
                return False

        await wait_until(healthy, timeout=30, interval=0.1)

        private_pg.stop()
        health = await http.get("/health")
        assert health.status_code == 503, health.text
        assert health.headers.get("retry-after"), health.headers
        assert health.json()["status"] == "unavailable"

        enqueued = await http.post("/jobs", json={"type": "work", "payload": {}})
        assert enqueued.status_code == 503, enqueued.text
        assert enqueued.headers.get("retry-after"), enqueued.headers
        error = enqueued.json()["error"]
        assert isinstance(error["code"], str) and error["code"], error
        assert isinstance(error["message"], str), error

        got = await http.get(f"/jobs/{uuid.uuid4()}")
        assert got.status_code == 503, got.text
        assert await stays_alive(server, 1.0), server.stderr()[-3000:]

        private_pg.start()
        # An idempotency key makes the repeats safe: a 503 must not have stored a job.
        body = {"type": "work", "payload": {"n": 1}, "idempotency_key": "after-the-outage"}

        async def accepted() -> httpx.Response | None:
            answer = await http.post("/jobs", json=body)
            return None if answer.status_code == 503 else answer

        created: httpx.Response = await wait_until(accepted, timeout=30, interval=0.2)
        assert created.status_code == 201, created.text
        job_id = created.json()["id"]

        async def finished() -> dict[str, Any] | None:
            job: dict[str, Any] = (await http.get(f"/jobs/{job_id}")).json()
            return job if job.get("status") in ("succeeded", "failed", "cancelled") else None

        job = await wait_until(finished, timeout=30, interval=0.1)
        assert (job["status"], job["attempts"]) == ("succeeded", 1), job

    assert server.alive()
    assert server.terminate() == 0, server.stderr()[-3000:]
    # A 503 is an answer, not a crash: no request reached the catch-all 500 handler.
    assert "unexpected error" not in server.stderr(), server.stderr()[-3000:]
    assert "exception was never retrieved" not in server.stderr(), server.stderr()[-3000:]
    await assert_invariants(private_pg.dsn, ledger, {job_id})


async def test_a_workers_connections_terminated_during_completion(
    pg_database: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    app = JobApp(pg_database)
    runs = 0

    @app.job("once")
    async def once(ctx: JobContext, payload: dict[str, Any]) -> str:
        nonlocal runs
        runs += 1
        return "done"

    calls: list[str] = []  # per call of record_outcomes: "ok" or the error it raised
    terminated: list[int] = []

    async with app:
        store = app.store
        real_record_outcomes = store.record_outcomes

        async def record_outcomes(outcomes: list[AttemptOutcome]) -> Any:
            if not calls:
                terminated.append(await terminate_other_backends(pg_database))
            try:
                written = await real_record_outcomes(outcomes)
            except Exception as exc:
                calls.append(type(exc).__name__)
                raise
            calls.append("ok")
            return written

        monkeypatch.setattr(store, "record_outcomes", record_outcomes)
        job = await app.enqueue("once")
        worker = app.worker(
            WorkerConfig(concurrency=2, poll_interval_seconds=0.1, lease_seconds=LEASE_SECONDS)
        )
        running = asyncio.create_task(worker.run())

        async def ended() -> bool:
            try:
                return (await app.get_job(job.id)).status.is_terminal
            except StoreUnavailableError:  # this reader's pooled connection was killed too
                return False

        await wait_until(ended, timeout=20)
        worker.stop()
        await asyncio.wait_for(running, 10)
        done = await app.get_job(job.id)

    assert terminated and terminated[0] >= 1, terminated  # the pool's and the listener's
    assert calls and calls[-1] == "ok", calls
    assert all(c in ("ok", "StoreUnavailableError") for c in calls), calls
    assert (done.status, done.attempts, done.result) == (JobState.SUCCEEDED, 1, "done")
    assert done.history == []
    assert runs == 1
