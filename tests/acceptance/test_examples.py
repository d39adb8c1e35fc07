"""The examples in the README run as written."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from tests.acceptance.conftest import Cli
from tests.acceptance.test_cli import poll, wait_for_line
from tests.helpers import free_port

ROOT = Path(__file__).resolve().parents[2]


def run_example(name: str, cwd: Path) -> str:
    """Run ``examples/NAME`` as a user would; its standard output."""
    result = subprocess.run(
        [sys.executable, str(ROOT / "examples" / name)],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=cwd,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    return result.stdout


def test_simple_example_runs(tmp_path: Path) -> None:
    output = run_example("simple_example.py", tmp_path)
    assert "calculate: succeeded -> {'sum': 6}" in output
    assert "say_hello: succeeded -> hello, world" in output


def test_example_handlers_module_registers_both_styles() -> None:
    from async_jobs import JobApp

    app = JobApp("memory://", handler_modules=["examples.myapp_jobs"])
    assert sorted(app.registry.types) == ["resize_image", "say_hello", "send_email"]


def test_lifecycle_example_runs(tmp_path: Path) -> None:
    output = run_example("lifecycle_example.py", tmp_path)
    assert "flaky_upload: succeeded -> uploaded cat.png after 3 attempts" in output
    assert "attempt 1: retry storage timed out" in output
    assert "attempt 2: retry storage asked us to slow down" in output
    assert "report: cancelled at" in output


def test_scheduling_example_runs(tmp_path: Path) -> None:
    output = run_example("scheduling_example.py", tmp_path)
    assert "free-plan job 4: refused (quota_exceeded)" in output
    assert "while paused, thumbnails started: 0" in output
    assert "at most 2 thumbnails ran at once" in output
    assert "small-customer's job started 2 of 16" in output
    assert "thumbnails succeeded: 16" in output
    finished = re.search(r"finished in the last hour: (\d+)", output)
    assert finished and int(finished.group(1)) >= 16
    assert "heartbeat ticks enqueued: " in output


def test_http_client_example_runs_against_a_server(
    cli: Cli, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    server = cli.start(
        "serve", "--port", str(port), ASYNC_JOBS_DB_DSN=f"sqlite:///{tmp_path / 'jobs.db'}"
    )
    wait_for_line(server, base)
    poll(lambda: _healthy(base))
    monkeypatch.setenv("ASYNC_JOBS_URL", base)
    output = run_example("http_client_example.py", tmp_path)
    assert "enqueued echo " in output
    assert "echo: succeeded -> {'hello': 'world'}" in output


def _healthy(base: str) -> bool:
    try:
        return httpx.get(f"{base}/health", timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


def test_worker_processes_example_runs(tmp_path: Path) -> None:
    output = run_example("worker_processes_example.py", tmp_path)
    assert "async-jobs worker --processes 2 --burst exited 0" in output
    assert "ready lines: 2" in output
    assert "jobs: {'succeeded': 40}" in output


def test_observability_example_runs(tmp_path: Path) -> None:
    output = run_example("observability_example.py", tmp_path)
    assert (
        'async_jobs_jobs_finished_total{outcome="succeeded",type="resize",use_case="images"} 2.0'
        in output
    )
    assert "ready: ok" in output
    assert output.count("span process resize (CONSUMER)") == 2
