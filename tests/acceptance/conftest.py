"""Run the real CLI in subprocesses."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest


class Cli:
    """Runs ``python -m async_jobs`` with a given environment, in a given directory."""

    def __init__(self, env: dict[str, str], cwd: Path) -> None:
        self.env = env
        self.cwd = cwd
        self.procs: list[subprocess.Popen[str]] = []

    def run(self, *args: str, timeout: float = 60, **env: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "async_jobs", *args],
            env={**self.env, **env},
            cwd=self.cwd,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )

    def start(self, *args: str, **env: str) -> subprocess.Popen[str]:
        proc = subprocess.Popen(
            [sys.executable, "-m", "async_jobs", *args],
            env={**self.env, **env},
            cwd=self.cwd,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.procs.append(proc)
        return proc

    def stop_all(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGKILL)
            proc.communicate(timeout=10)


@pytest.fixture
def cli(tmp_path: Path) -> Iterator[Cli]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ASYNC_JOBS_")}
    env["PYTHONUNBUFFERED"] = "1"
    runner = Cli(env, tmp_path)
    yield runner
    runner.stop_all()
