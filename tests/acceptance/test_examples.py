"""The examples in the README run as written."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_simple_example_runs(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "simple_example.py")],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert "calculate: succeeded -> {'sum': 6}" in result.stdout
    assert "say_hello: succeeded -> hello, world" in result.stdout


def test_example_handlers_module_registers_both_styles() -> None:
    from async_jobs import JobApp

    app = JobApp("memory://", handler_modules=["examples.myapp_jobs"])
    assert sorted(app.registry.types) == ["resize_image", "say_hello", "send_email"]


def test_lifecycle_example_runs(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "lifecycle_example.py")],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert "flaky_upload: succeeded -> uploaded cat.png after 3 attempts" in result.stdout
    assert "attempt 1: retry storage timed out" in result.stdout
    assert "attempt 2: retry storage asked us to slow down" in result.stdout
    assert "report: cancelled at" in result.stdout
