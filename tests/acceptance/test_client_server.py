"""The blocking Python client against a real ``async-jobs serve`` process over TCP."""

from __future__ import annotations

import json
import signal
from pathlib import Path

import httpx
import pytest

from async_jobs import AuthTokenError, JobsClient, JobState
from tests.acceptance.conftest import Cli
from tests.acceptance.test_cli import poll, wait_for_line
from tests.helpers import free_port


def answers(client: JobsClient) -> bool:
    try:
        return client.health()["status"] == "ok"
    except httpx.TransportError:
        return False


def test_the_client_enqueues_runs_and_lists_on_a_served_sqlite_store(
    cli: Cli, tmp_path: Path
) -> None:
    port = free_port()
    server = cli.start(
        "serve",
        "--port",
        str(port),
        ASYNC_JOBS_DB_DSN=f"sqlite:///{tmp_path / 'served.db'}",
        ASYNC_JOBS_API_TOKENS=json.dumps({"s3cret": "*"}),
    )
    base = f"http://127.0.0.1:{port}"
    wait_for_line(server, base)
    with JobsClient(base, token="s3cret", retries=0) as client:
        poll(lambda: answers(client))

        delayed = client.enqueue("echo", {"n": 0}, delay_seconds=3600, tenant_id="acme")
        assert (delayed.status, delayed.tenant_id) == (JobState.PENDING, "acme")
        ran = client.run("sleep", {"seconds": 0.2, "message": "over TCP"}, timeout=20)
        assert ran.status is JobState.SUCCEEDED
        assert ran.result == {"slept_seconds": 0.2, "message": "over TCP"}
        echoed = client.run("echo", {"n": 1}, timeout=20)
        assert echoed.result == {"n": 1}

        listed = list(client.list(limit=2))
        assert [job.id for job in listed] == [echoed.id, ran.id, delayed.id]
        assert [job.id for job in client.list(status="pending")] == [delayed.id]
        assert client.get(delayed.id).payload == {"n": 0}

    with JobsClient(base) as anonymous, pytest.raises(AuthTokenError):
        anonymous.get(delayed.id)

    server.send_signal(signal.SIGTERM)
    assert server.wait(30) == 0
