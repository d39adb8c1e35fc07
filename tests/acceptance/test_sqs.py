"""The sqs transport end to end: real `api`, `scheduler` and `worker` processes, one
PostgreSQL database, one local SQS server (moto's server mode); faults by signals and by
stopping the SQS server. Assertions on the store, the execution ledger and queue depths."""

from __future__ import annotations

import asyncio
import signal
import subprocess
import uuid
from pathlib import Path
from typing import Any

import httpx
import pytest

from async_jobs import JobApp, JobState
from async_jobs.core.settings import Settings
from async_jobs.transports.sqs import SqsClient
from tests.acceptance.conftest import Cli
from tests.acceptance.invariants import assert_invariants
from tests.acceptance.test_cli import wait_for_line
from tests.acceptance.test_reliability import backdate_running_leases, starts_of
from tests.helpers import SqsServer, free_port, wait_until

REPO = Path(__file__).resolve().parents[2]
LEDGER_JOBS = "tests.acceptance.ledger_jobs"

pytestmark = [pytest.mark.postgres, pytest.mark.cpu_heavy]


def sqs_env(dsn: str, server: SqsServer, ledger: Path, **extra: str) -> dict[str, str]:
    return {
        "ASYNC_JOBS_DB_DSN": dsn,
        "ASYNC_JOBS_TRANSPORT": "sqs",
        "ASYNC_JOBS_SQS_ENDPOINT_URL": server.endpoint,
        "ASYNC_JOBS_SQS_QUEUE_DEFAULT": server.queue_url(f"jobs-{uuid.uuid4().hex[:8]}"),
        "ASYNC_JOBS_POLL_INTERVAL_SECONDS": "0.1",
        "ASYNC_JOBS_SCHEDULER_INTERVAL_SECONDS": "0.2",
        "ASYNC_JOBS_LEADER_LEASE_SECONDS": "2",
        "ASYNC_JOBS_SQS_LONG_POLL_SECONDS": "2",  # a stopping worker lets its polls end
        "PYTHONPATH": str(REPO),
        "AJ_TEST_LEDGER": str(ledger),
        **extra,
    }


def start(cli: Cli, env: dict[str, str], *args: str) -> subprocess.Popen[str]:
    proc = cli.start(*args, **env)
    ready = "async-jobs api:" if args[0] == "api" else f"async-jobs {args[0]} ready"
    wait_for_line(proc, ready, timeout=30)
    return proc


def create_queues(cli: Cli, env: dict[str, str]) -> None:
    made = cli.run("sqs", "create-queues", "--handlers", LEDGER_JOBS, **env)
    assert made.returncode == 0, made.stderr


async def depth(env: dict[str, str]) -> tuple[int, int]:
    settings = Settings.from_env(env)
    client = SqsClient(JobApp(settings=settings).sqs_config())
    await client.open()
    try:
        return await client.depth(env["ASYNC_JOBS_SQS_QUEUE_DEFAULT"])
    finally:
        await client.close()


async def statuses(app: JobApp, ids: list[Any]) -> dict[Any, JobState]:
    return {job_id: (await app.get_job(job_id)).status for job_id in ids}


async def test_say_hello_goes_from_the_api_through_sqs_to_a_worker(
    cli: Cli, pg_database: str, sqs_server: SqsServer, tmp_path: Path
) -> None:
    env = sqs_env(pg_database, sqs_server, tmp_path / "ledger.jsonl")
    create_queues(cli, env)
    port = free_port()
    start(cli, env, "api", "--port", str(port))
    start(cli, env, "scheduler")
    worker = start(cli, env, "worker", "--handlers", "async_jobs.demo", "--use-case", "default")
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as http:
        answer = await http.post("/jobs", json={"type": "say_hello", "priority": "medium"})
        assert answer.status_code == 201, answer.text
        job_id = answer.json()["id"]
        done = await http.get(f"/jobs/{job_id}", params={"wait": 30})
    assert done.status_code == 200, done.text
    body = done.json()
    assert (body["status"], body["attempts"], body["result"]) == ("succeeded", 1, "say hello")
    wait_for_line(worker, "say hello")
    await wait_until(lambda: _drained(env), timeout=20)
    status = cli.run("sqs", "status", **env)
    assert status.returncode == 0, status.stderr
    assert '"visible": 0' in status.stdout


async def _drained(env: dict[str, str]) -> bool:
    return await depth(env) == (0, 0)


# 1,000 jobs through the local SQS server: moto, which bounds the rate (on a slower VM it
# sent, received and deleted 42 messages/s at a full core, `async-jobs bench --transport
# sqs`). There 5,000 jobs took 83 s alone and over 173 s beside the rest of the suite, and
# 2,000 took 45 s alone and 139 s beside it; hence also the longer deadlines.
@pytest.mark.cpu_heavy(seconds=25)
@pytest.mark.timeout(330)
async def test_three_schedulers_and_three_workers_run_every_job_once(
    cli: Cli, pg_database: str, sqs_server: SqsServer, tmp_path: Path
) -> None:
    ledger = tmp_path / "ledger.jsonl"
    env = sqs_env(pg_database, sqs_server, ledger, ASYNC_JOBS_DEFAULT_MAX_CONCURRENT="60")
    create_queues(cli, env)
    port = free_port()
    start(cli, env, "api", "--port", str(port))
    for _ in range(3):
        start(cli, env, "scheduler")
    workers = [
        start(cli, env, "worker", "--handlers", LEDGER_JOBS, "--concurrency", "20")
        for _ in range(3)
    ]
    total = 1000
    ids: list[str] = []
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=60) as http:
        for first in range(0, total, 1000):
            jobs = [{"type": "work", "payload": {"n": n}} for n in range(first, first + 1000)]
            answer = await http.post("/jobs/batch", json={"jobs": jobs})
            assert answer.status_code == 201, answer.text
            ids += [job["id"] for job in answer.json()["items"]]
    app = JobApp(pg_database)
    async with app:

        async def all_succeeded() -> bool:
            stats = await app.stats()
            return sum(c.count for c in stats.counts if c.status == "succeeded") == total

        await wait_until(all_succeeded, timeout=240, interval=0.5)
    await wait_until(lambda: _drained(env), timeout=30)
    for proc in workers:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0
    rows = await assert_invariants(pg_database, ledger, set(ids))
    assert {(r["status"], r["attempts"]) for r in rows} == {("succeeded", 1)}


async def test_a_worker_killed_mid_job_is_run_again_after_its_lease(
    cli: Cli, pg_database: str, sqs_server: SqsServer, tmp_path: Path
) -> None:
    ledger = tmp_path / "ledger.jsonl"
    # The dead worker's message comes back after its visibility timeout (then deleted as
    # stale by the other worker): short here, so that the queue drains soon.
    env = sqs_env(pg_database, sqs_server, ledger, ASYNC_JOBS_SQS_VISIBILITY_TIMEOUT_SECONDS="3")
    create_queues(cli, env)
    start(cli, env, "scheduler")
    first = start(cli, env, "worker", "--handlers", LEDGER_JOBS)
    app = JobApp(pg_database, handler_modules=[LEDGER_JOBS])
    async with app:
        job = await app.enqueue("work", {"hang_on_attempt": 1, "n": 7})
        await wait_until(lambda: starts_of(ledger, job.id), timeout=30)
        first.send_signal(signal.SIGKILL)
        first.wait(10)
        start(cli, env, "worker", "--handlers", LEDGER_JOBS)
        # Instead of waiting out the 30 s lease: it has run out now. The leading scheduler
        # reaps the job and dispatches it again; the new worker runs attempt 2.
        assert await backdate_running_leases(pg_database) == 1

        async def ended() -> bool:
            return (await app.get_job(job.id)).status.is_terminal

        await wait_until(ended, timeout=30)
        done = await app.get_job(job.id)
    assert (done.status, done.attempts) == (JobState.SUCCEEDED, 2)
    assert [h.outcome for h in done.history] == ["worker_lost"]
    assert len({e["pid"] for e in starts_of(ledger, job.id)}) == 2
    await assert_invariants(pg_database, ledger, {str(job.id)})
    await wait_until(lambda: _drained(env), timeout=30)


async def test_an_sqs_outage_loses_nothing(
    cli: Cli, pg_database: str, tmp_path: Path, sqs_server: SqsServer
) -> None:
    """The SQS server stops (with what it held: moto keeps nothing) while jobs are waiting
    and being enqueued; scheduler and worker stay up, and once it is back every job runs."""
    private = SqsServer()
    private.start()
    try:
        ledger = tmp_path / "ledger.jsonl"
        env = sqs_env(pg_database, private, ledger, ASYNC_JOBS_SQS_DISPATCH_TIMEOUT_SECONDS="2")
        create_queues(cli, env)
        scheduler = start(cli, env, "scheduler")
        worker = start(cli, env, "worker", "--handlers", LEDGER_JOBS)
        app = JobApp(pg_database, handler_modules=[LEDGER_JOBS])
        async with app:
            before = [(await app.enqueue("work", {"n": n})).id for n in range(5)]
            await wait_until(lambda: _all_succeeded(app, before), timeout=30)
            private.stop()
            during = [(await app.enqueue("work", {"n": n})).id for n in range(5, 25)]
            await asyncio.sleep(2)  # wait-ok: the outage lasts a while, on purpose
            assert scheduler.poll() is None and worker.poll() is None
            private.start()
            create_queues(cli, env)
            await wait_until(lambda: _all_succeeded(app, during), timeout=60, interval=0.2)
        assert scheduler.poll() is None and worker.poll() is None
        rows = await assert_invariants(pg_database, ledger, {str(i) for i in before + during})
        assert {r["status"] for r in rows} == {"succeeded"}
    finally:
        private.stop()


async def _all_succeeded(app: JobApp, ids: list[Any]) -> bool:
    return set((await statuses(app, ids)).values()) == {JobState.SUCCEEDED}
