"""A real server (``async-jobs serve`` in a process of its own, SQLite, four tokens) and
Debian's Chromium driven by Playwright. Chromium is installed (``apt-get install -y
chromium``) when it is missing; Playwright's own browser download is not used."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.helpers import free_port

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
TOKENS = {
    "admin-token": "*",
    "tenant-a-token": "tenant-a",
    "tenant-b-token": "tenant-b",
    "read-token": {"tenant": "*", "role": "read"},
}
ARTIFACTS = Path(__file__).with_name("artifacts")
ROOT = Path(__file__).parents[2]

playwright_api = pytest.importorskip("playwright.sync_api")


def ensure_chromium() -> None:
    if Path(CHROMIUM).exists():
        return
    apt = shutil.which("apt-get")
    if apt is None:
        pytest.skip("chromium is missing and apt-get is not available to install it")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    subprocess.run([apt, "update", "-qq"], env=env, capture_output=True, check=False)
    done = subprocess.run(
        [apt, "install", "-y", "chromium"], env=env, capture_output=True, text=True, check=False
    )
    if done.returncode != 0 or not Path(CHROMIUM).exists():
        pytest.fail(f"could not install chromium: {done.stderr[-2000:]}")


class Server:
    def __init__(self, url: str, proc: subprocess.Popen[str]) -> None:
        self.url = url
        self.proc = proc
        self.http = httpx.Client(base_url=url, timeout=10)

    def api(self, token: str = "admin-token") -> dict[str, str]:
        return {"Authorization": f"Bearer {token}"}

    def enqueue(self, token: str = "admin-token", **body: object) -> dict[str, object]:
        answer = self.http.post("/jobs", json=body, headers=self.api(token))
        assert answer.status_code == 201, answer.text
        job: dict[str, object] = answer.json()
        return job

    def job(self, job_id: object) -> dict[str, object]:
        found: dict[str, object] = self.http.get(f"/jobs/{job_id}", headers=self.api()).json()
        return found


@pytest.fixture(scope="session")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    ensure_chromium()
    folder = tmp_path_factory.mktemp("dashboard")
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("ASYNC_JOBS_")}
    env.update(
        ASYNC_JOBS_DB_DSN=f"sqlite:///{folder / 'jobs.db'}",
        ASYNC_JOBS_API_TOKENS=json.dumps(TOKENS),
        ASYNC_JOBS_POLL_INTERVAL_SECONDS="0.1",
        # At the end a test's long job may still run: hand it back soon, do not wait it out.
        ASYNC_JOBS_WORKER_GRACE_SECONDS="1",
        PYTHONPATH=str(ROOT),
        PYTHONUNBUFFERED="1",
    )
    log = (folder / "server.log").open("w")
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "async_jobs",
            "serve",
            "--port",
            str(port),
            "--concurrency",
            "4",
            "--handlers",
            "async_jobs.demo,tests.browser.handlers",
        ],
        env=env,
        cwd=folder,
        stdout=log,
        stderr=subprocess.STDOUT,
        text=True,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while True:
        try:
            if httpx.get(f"{url}/health", timeout=1).status_code == 200:
                break
        except httpx.TransportError:
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            proc.wait()
            log.close()
            pytest.fail(f"the server did not start: {(folder / 'server.log').read_text()[-3000:]}")
        time.sleep(0.1)  # wait-ok: polling the server's start with a deadline
    running = Server(url, proc)
    yield running
    running.http.close()
    proc.terminate()
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
    log.close()


@pytest.fixture(scope="session")
def chromium() -> Iterator[object]:
    ensure_chromium()
    with playwright_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield browser
        browser.close()


@pytest.fixture
def page(chromium: object, request: pytest.FixtureRequest) -> Iterator[object]:
    """A fresh browser context (no cookies) and page; JavaScript dialogs are recorded (and
    dismissed unless a test accepts them) so that a test can tell no script ran."""
    context = chromium.new_context(viewport={"width": 1280, "height": 860})  # type: ignore[attr-defined]
    page = context.new_page()
    page.set_default_timeout(15_000)
    yield page
    context.close()


def shot(page: object, name: str) -> Path:
    ARTIFACTS.mkdir(exist_ok=True)
    path = ARTIFACTS / f"{name}.png"
    page.screenshot(path=str(path), full_page=True)  # type: ignore[attr-defined]
    return path
