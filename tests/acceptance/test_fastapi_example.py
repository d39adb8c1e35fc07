"""examples/fastapi_example.py: in-process, and as a real uvicorn process."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.acceptance.test_cli import poll
from tests.helpers import free_port, wait_until

ROOT = Path(__file__).resolve().parents[2]


def _check_health_and_router(health: httpx.Response, mounted: httpx.Response) -> None:
    assert health.status_code == 200
    assert health.json() == {"status": "ok"}
    assert mounted.status_code == 200, mounted.text
    assert mounted.json()["status"] == "succeeded"


async def test_the_fastapi_example_in_process(capsys: pytest.CaptureFixture[str]) -> None:
    from examples.fastapi_example import app

    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as http:
            hello = await http.post("/jobs", json={"type": "say_hello", "name": "Ada"})
            total = await http.post("/jobs", json={"type": "calculation", "numbers": [1, 2, 3.5]})
            assert (hello.status_code, total.status_code) == (201, 201), hello.text
            assert hello.json()["status"] == "pending"

            async def succeeded(job_id: str) -> dict[str, Any] | None:
                job: dict[str, Any] = (await http.get(f"/jobs/{job_id}")).json()
                return job if job["status"] == "succeeded" else None

            said = await wait_until(lambda: succeeded(hello.json()["id"]), timeout=10)
            added = await wait_until(lambda: succeeded(total.json()["id"]), timeout=10)
            assert said["result"] == "hello, Ada"
            assert added["result"] == {"sum": 6.5, "count": 3}
            assert (said["type"], added["type"]) == ("say_hello", "calculation")

            unknown = await http.post("/jobs", json={"type": "nope"})
            assert unknown.status_code == 422
            missing = await http.get("/jobs/00000000-0000-0000-0000-000000000000")
            assert missing.status_code == 404
            _check_health_and_router(
                await http.get("/health"), await http.get(f"/async-jobs/jobs/{said['id']}")
            )
            # The mounted router's errors are JSON answers, not 500s.
            gone = await http.get("/async-jobs/jobs/00000000-0000-0000-0000-000000000000")
            assert gone.status_code == 404
            assert gone.json()["error"]["code"] == "job_not_found"
            page = await http.get(f"/async-jobs/dashboard/jobs/{said['id']}")
            assert page.status_code == 200 and "hello, Ada" in page.text
            assert "frame-ancestors 'none'" in page.headers["content-security-policy"]
    assert "say hello" in capsys.readouterr().out


@pytest.fixture
def server(tmp_path: Path) -> Iterator[str]:
    """``uvicorn examples.fastapi_example:app`` on a free port; its base URL."""
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("ASYNC_JOBS_")}
    env["ASYNC_JOBS_DB_DSN"] = f"sqlite:///{tmp_path / 'jobs.db'}"
    env["PYTHONUNBUFFERED"] = "1"
    proc = subprocess.Popen(
        [sys.executable, "-m", "uvicorn", "examples.fastapi_example:app", "--port", str(port)],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        poll(lambda: proc.poll() is not None or _healthy(base), timeout=30)
        assert proc.poll() is None, proc.communicate(timeout=10)[1]
        yield base
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=30)
    # uvicorn re-raises the SIGTERM it handled once the app has shut down cleanly
    assert proc.returncode in (0, -signal.SIGTERM), err
    assert "Application shutdown complete" in err
    assert "say hello" in out


def _healthy(base: str) -> bool:
    try:
        return httpx.get(f"{base}/health", timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


def test_the_fastapi_example_under_uvicorn(server: str) -> None:
    with httpx.Client(base_url=server, timeout=10) as http:
        hello = http.post("/jobs", json={"type": "say_hello"})
        total = http.post("/jobs", json={"type": "calculation", "numbers": [10, 20, 12]})
        assert (hello.status_code, total.status_code) == (201, 201), hello.text

        def succeeded(job_id: str) -> dict[str, Any] | None:
            job: dict[str, Any] = http.get(f"/jobs/{job_id}").json()
            return job if job["status"] == "succeeded" else None

        said: Any = poll(lambda: succeeded(hello.json()["id"]), timeout=20)
        added: Any = poll(lambda: succeeded(total.json()["id"]), timeout=20)
        assert said["result"] == "hello, world"
        assert added["result"] == {"sum": 42.0, "count": 3}
        _check_health_and_router(http.get("/health"), http.get(f"/async-jobs/jobs/{said['id']}"))
