"""The chores happen with no scheduler process: an ``api`` and two ``worker`` processes on
PostgreSQL, one of the workers leads (the same lease row schedulers use), a webhook is
delivered once, each periodic tick is enqueued once, and ``kill -9`` of the leading worker
hands the lead to the other."""

from __future__ import annotations

import asyncio
import http.server
import json
import signal
import threading
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from async_jobs import JobApp, JobFilter, Leader, Settings
from tests.acceptance.conftest import Cli
from tests.acceptance.test_cli import poll, wait_for_line
from tests.helpers import free_port

FAST = {"ASYNC_JOBS_SCHEDULER_INTERVAL_SECONDS": "0.2", "ASYNC_JOBS_LEADER_LEASE_SECONDS": "1.5"}


class _Hooks(http.server.BaseHTTPRequestHandler):
    received: list[dict[str, Any]]

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"]))
        self.received.append(json.loads(body))
        self.send_response(204)
        self.end_headers()

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture
def hooks() -> Iterator[tuple[str, list[dict[str, Any]]]]:
    """A webhook receiver on a free port: its URL and the bodies it received."""
    received: list[dict[str, Any]] = []
    handler = type("Hooks", (_Hooks,), {"received": received})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", free_port()), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_port}/hook", received
    server.shutdown()
    server.server_close()


def _leader(dsn: str) -> Leader | None:
    async def read() -> Leader | None:
        async with JobApp(settings=Settings(db_dsn=dsn)) as jobs:
            return await jobs.leader()

    return asyncio.run(read())


def _periodic_jobs(dsn: str) -> list[str]:
    async def read() -> list[str]:
        async with JobApp(settings=Settings(db_dsn=dsn)) as jobs:
            page = await jobs.list_jobs(JobFilter(type="say_hello"), 100)
            return [str(job.idempotency_key) for job in page.items]

    return asyncio.run(read())


def test_api_and_two_workers_lead_the_chores_once_and_hand_over(
    cli: Cli, pg_database: str, hooks: tuple[str, list[dict[str, Any]]]
) -> None:
    hook_url, received = hooks
    port = free_port()
    env = {
        "ASYNC_JOBS_DB_DSN": pg_database,
        "ASYNC_JOBS_HANDLERS": "async_jobs.demo",
        "ASYNC_JOBS_WEBHOOK_ALLOWED_HOSTS": "127.0.0.1",
        "ASYNC_JOBS_PERIODIC_JOBS": json.dumps(
            [{"cron": "* * * * *", "type": "say_hello", "name": "hello"}]
        ),
        "ASYNC_JOBS_API_PORT": str(port),
        **FAST,
    }
    api = cli.start("api", **env)
    workers = {}
    for _ in range(2):
        worker = cli.start("worker", **env)
        wait_for_line(worker, "async-jobs worker ready:")
        workers[worker.pid] = worker
    wait_for_line(api, "async-jobs api:")

    first = poll(lambda: _leader(pg_database))
    assert isinstance(first, Leader) and first.process_role == "worker"
    assert int(first.process_id.split(":")[1]) in workers

    base = f"http://127.0.0.1:{port}"
    job = httpx.post(f"{base}/jobs?wait=20", json={"type": "echo", "webhook_url": hook_url})
    assert job.json()["status"] == "succeeded"
    poll(lambda: received, timeout=20)
    # Each periodic tick was enqueued once (a minute boundary may bring a second tick).
    ticks = poll(lambda: _periodic_jobs(pg_database), timeout=20)
    assert isinstance(ticks, list) and len(ticks) == len(set(ticks)) >= 1

    # kill -9 the leading worker: the other takes the lead once the lease runs out.
    workers.pop(int(first.process_id.split(":")[1])).send_signal(signal.SIGKILL)
    second = poll(
        lambda: (lead := _leader(pg_database)) and lead.holder != first.holder and lead,
        timeout=15,
    )
    [survivor] = workers.values()
    assert isinstance(second, Leader) and second.process_role == "worker"
    assert int(second.process_id.split(":")[1]) == survivor.pid

    again = httpx.post(f"{base}/jobs?wait=20", json={"type": "echo", "webhook_url": hook_url})
    assert again.json()["status"] == "succeeded"
    poll(lambda: len(received) >= 2, timeout=20)
    assert sorted(body["id"] for body in received) == sorted(
        [job.json()["id"], again.json()["id"]]
    )  # each delivered once
    for proc in (survivor, api):
        proc.send_signal(signal.SIGTERM)
        proc.communicate(timeout=30)
        assert proc.returncode == 0
