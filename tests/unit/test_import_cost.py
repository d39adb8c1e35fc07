"""A service that only calls the API over HTTP must not load the server: no store, transport
or composition root, and none of their drivers. Checked in a fresh interpreter, since this
test process has imported everything already."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

import async_jobs
import async_jobs.app
from async_jobs.domain.requests import EnqueueRequest

SERVER_SIDE = ("asyncpg", "aiosqlite", "aiobotocore", "async_jobs.app")
SERVER_PACKAGES = ("async_jobs.stores", "async_jobs.transports")


def _modules_after(statement: str) -> list[str]:
    probe = f"import json, sys\n{statement}\nprint(json.dumps(sorted(sys.modules)))"
    out = subprocess.run(
        [sys.executable, "-c", probe], check=True, capture_output=True, text=True, timeout=60
    ).stdout
    loaded: list[str] = json.loads(out)
    return loaded


def _server_side(modules: list[str]) -> list[str]:
    return [
        name
        for name in modules
        if name.split(".")[0] in SERVER_SIDE
        or name in SERVER_SIDE
        or name.startswith(SERVER_PACKAGES)
    ]


@pytest.mark.parametrize(
    "statement",
    [
        "import async_jobs",
        "from async_jobs import AsyncJobsClient",
        "from async_jobs import JobsClient, EnqueueRequest, JobState",
        "import async_jobs.client",
    ],
)
def test_the_client_loads_no_store_transport_or_driver(statement: str) -> None:
    modules = _modules_after(statement)
    assert "async_jobs" in modules
    assert _server_side(modules) == []


def test_the_probe_sees_the_server_when_it_is_loaded() -> None:
    """The check above would pass vacuously if the probe could not see these modules."""
    found = _server_side(
        _modules_after(
            "import aiobotocore, async_jobs.app, async_jobs.stores.postgres,"
            " async_jobs.stores.sqlite, async_jobs.transports.sqs"
        )
    )
    expected = {
        "async_jobs.app",
        "async_jobs.transports.sqs",
        "asyncpg",
        "aiosqlite",
        "aiobotocore",
    }
    assert expected <= set(found)


def test_the_request_has_one_home_that_every_old_path_names() -> None:
    assert async_jobs.EnqueueRequest is EnqueueRequest
    assert async_jobs.app.EnqueueRequest is EnqueueRequest


def test_a_lazy_name_resolves_once_and_unknown_names_fail() -> None:
    assert async_jobs.JobApp is async_jobs.app.JobApp
    assert "JobApp" in vars(async_jobs)  # cached after the first lookup
    assert set(async_jobs.__all__) <= set(dir(async_jobs))
    with pytest.raises(AttributeError, match="no_such_name"):
        _ = async_jobs.no_such_name  # type: ignore[attr-defined]
