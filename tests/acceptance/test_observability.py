"""Metrics, health probes and JSON logs of real ``api``, ``scheduler`` and ``worker``
processes on PostgreSQL, with a known workload: every process is scraped and its counters
and histogram counts are checked exactly."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.acceptance.conftest import Cli
from tests.acceptance.test_cli import poll, wait_for_line
from tests.helpers import free_port

REPO = Path(__file__).resolve().parents[2]
TOKEN = "tok-SECRET-7f3a9c"
WEBHOOK_SECRET = "whsec-SECRET-51bd0e"
MARKER = "PAYLOAD-MARKER-4242"
SUCCEED, FAIL, CANCEL = 5, 3, 2


def samples(text: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    """Every sample of a scrape, by name and labels (parsed by prometheus_client)."""
    found: dict[tuple[str, frozenset[tuple[str, str]]], float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            found[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return found


def value(
    scrape: dict[tuple[str, frozenset[tuple[str, str]]], float], name: str, **labels: str
) -> float:
    return scrape.get((name, frozenset(labels.items())), 0.0)


def scrape(url: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    response = httpx.get(url, timeout=10)
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    return samples(response.text)


def _env(dsn: str) -> dict[str, str]:
    return {
        "ASYNC_JOBS_DB_DSN": dsn,
        "ASYNC_JOBS_HANDLERS": "tests.acceptance.observe_jobs",
        "ASYNC_JOBS_ENQUEUE_AUTH_TOKEN": TOKEN,
        "ASYNC_JOBS_WEBHOOK_SECRET": WEBHOOK_SECRET,
        "ASYNC_JOBS_LOG_FORMAT": "json",
        "ASYNC_JOBS_LOG_LEVEL": "DEBUG",
        "ASYNC_JOBS_SCHEDULER_INTERVAL_SECONDS": "0.2",
        "ASYNC_JOBS_LEADER_LEASE_SECONDS": "1.5",
        "PYTHONPATH": str(REPO),
    }


def _enqueue(client: httpx.Client, body: dict[str, Any]) -> str:
    response = client.post("/jobs", json=body)
    assert response.status_code == 201, response.text
    return str(response.json()["id"])


def _stop(proc: subprocess.Popen[str]) -> tuple[str, str]:
    proc.terminate()
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    return out, err


@pytest.mark.cpu_heavy
def test_a_known_workload_is_counted_exactly_by_every_process(cli: Cli, pg_database: str) -> None:
    env = _env(pg_database)
    api_port, scheduler_port, worker_port = free_port(), free_port(), free_port()
    api = cli.start("api", "--port", str(api_port), **env)
    wait_for_line(api, "async-jobs api")
    scheduler = cli.start("scheduler", "--metrics-port", str(scheduler_port), **env)
    wait_for_line(scheduler, "scheduler ready")
    base = f"http://127.0.0.1:{api_port}"
    poll(lambda: _answers(f"{base}/health"))
    headers = {"Authorization": f"Bearer {TOKEN}"}
    with httpx.Client(base_url=base, headers=headers, timeout=10) as client:
        for i in range(SUCCEED):
            _enqueue(client, {"type": "obs_ok", "payload": {"marker": MARKER, "i": i}})
        for _ in range(FAIL):
            _enqueue(client, {"type": "obs_boom", "payload": {"marker": MARKER}})
        cancelled = [
            _enqueue(
                client, {"type": "obs_ok", "payload": {"marker": MARKER}, "delay_seconds": 3600}
            )
            for _ in range(CANCEL)
        ]
        for job_id in cancelled:
            assert client.post(f"/jobs/{job_id}/cancel").status_code == 200
        late = _enqueue(
            client, {"type": "obs_ok", "payload": {"marker": MARKER}, "delay_tolerance_seconds": 0}
        )
        worker = cli.start(
            "worker", "--metrics-port", str(worker_port), "--concurrency", "4", **env
        )
        wait_for_line(worker, "worker ready")
        poll(lambda: _all_ended(client), timeout=30)
        assert client.get(f"/jobs/{late}").json()["status"] == "succeeded"

        worker_metrics = f"http://127.0.0.1:{worker_port}/metrics"
        w = poll(lambda: _when_counted(scrape(worker_metrics)), timeout=10)
        assert isinstance(w, dict)
        a = scrape(f"{base}/metrics")
        s = scrape(f"http://127.0.0.1:{scheduler_port}/metrics")
        ready = client.get("/health/ready")

    ok, boom = {"use_case": "obs", "type": "obs_ok"}, {"use_case": "obs", "type": "obs_boom"}
    # The API enqueued and cancelled; the worker started and finished.
    assert value(a, "async_jobs_jobs_enqueued_total", **ok) == SUCCEED + CANCEL + 1
    assert value(a, "async_jobs_jobs_enqueued_total", **boom) == FAIL
    assert value(a, "async_jobs_jobs_finished_total", **ok, outcome="cancelled") == CANCEL
    assert value(w, "async_jobs_jobs_started_total", **ok) == SUCCEED + 1
    assert value(w, "async_jobs_jobs_started_total", **boom) == 2 * FAIL
    assert value(w, "async_jobs_jobs_finished_total", **ok, outcome="succeeded") == SUCCEED + 1
    assert value(w, "async_jobs_jobs_finished_total", **boom, outcome="retried") == FAIL
    assert value(w, "async_jobs_jobs_finished_total", **boom, outcome="failed") == FAIL
    assert value(w, "async_jobs_job_run_seconds_count", **ok) == SUCCEED + 1
    assert value(w, "async_jobs_job_run_seconds_count", **boom) == 2 * FAIL
    assert (
        value(w, "async_jobs_job_queue_wait_seconds_count", use_case="obs")
        == SUCCEED + 1 + 2 * FAIL
    )
    assert value(w, "async_jobs_deadline_missed_total", use_case="obs") == 1
    assert (
        value(w, "async_jobs_worker_slots", state="busy")
        + value(w, "async_jobs_worker_slots", state="free")
        == 4
    )
    # Nothing of that kind is counted where it did not happen.
    assert value(w, "async_jobs_jobs_enqueued_total", **ok) == 0
    assert value(a, "async_jobs_jobs_started_total", **ok) == 0
    # The leading scheduler says so, and both it and the API report the store's gauges:
    # the cancelled jobs are terminal, so nothing is pending any more.
    assert value(s, "async_jobs_scheduler_leader") == 1
    assert value(s, "async_jobs_jobs", state="pending", use_case="obs") == 0
    assert value(s, "async_jobs_leases_expired_total", use_case="obs") == 0
    # No job id and no tenant among the labels.
    for scrape_ in (a, w, s):
        for _, labels in scrape_:
            assert {name for name, _ in labels} <= {
                "use_case",
                "type",
                "outcome",
                "state",
                "transport",
                "event",
                "operation",
                "le",
            }

    assert ready.status_code == 200
    assert set(ready.json()["components"]) == {"store", "migrations", "transport"}
    health = httpx.get(f"http://127.0.0.1:{worker_port}/health/ready", timeout=10)
    assert health.status_code == 200 and health.json()["status"] == "ok"

    outputs = [_stop(p) for p in (worker, scheduler, api)]
    _check_json_logs(outputs)


def _answers(url: str) -> bool:
    try:
        return httpx.get(url, timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


def _all_ended(client: httpx.Client) -> bool:
    items = client.get("/jobs", params={"limit": 100}).json()["items"]
    return all(item["status"] in ("succeeded", "failed", "cancelled") for item in items)


def _when_counted(scrape_: dict[tuple[str, frozenset[tuple[str, str]]], float]) -> object:
    """The worker's scrape once every outcome is written (they are counted per batch)."""
    finished = sum(
        v for (name, _), v in scrape_.items() if name == "async_jobs_jobs_finished_total"
    )
    return scrape_ if finished == SUCCEED + 1 + 2 * FAIL else None


def _check_json_logs(outputs: list[tuple[str, str]]) -> None:
    job_lines = []
    for out, err in outputs:
        for line in (out + err).splitlines():
            entry = json.loads(line)  # every line the process wrote is one JSON object
            assert {"time", "level", "logger", "message"} <= set(entry)
            assert TOKEN not in line and WEBHOOK_SECRET not in line and MARKER not in line
            if entry["logger"] == "observe.handler":
                job_lines.append(entry)
    assert len(job_lines) == SUCCEED + 1 + 2 * FAIL
    for entry in job_lines:
        assert {"job_id", "attempt", "type", "use_case", "tenant_id", "worker_id"} <= set(entry)
        assert entry["use_case"] == "obs"
    assert {e["attempt"] for e in job_lines if e["type"] == "obs_boom"} == {1, 2}


def test_health_exits_1_until_the_schema_is_migrated_then_0(
    cli: Cli, empty_pg_database: str
) -> None:
    before = cli.run("health", ASYNC_JOBS_DB_DSN=empty_pg_database)
    assert before.returncode == 1, before.stderr
    components = json.loads(before.stdout)["components"]
    assert components["store"]["status"] == "ok"
    assert components["migrations"]["status"] == "unavailable"
    assert "0001_initial" in components["migrations"]["detail"]
    assert cli.run("migrate", ASYNC_JOBS_DB_DSN=empty_pg_database).returncode == 0
    after = cli.run("health", ASYNC_JOBS_DB_DSN=empty_pg_database)
    assert after.returncode == 0, after.stdout
    unreachable = cli.run(
        "health", ASYNC_JOBS_DB_DSN=f"postgresql://postgres@127.0.0.1:{free_port()}/x"
    )
    assert unreachable.returncode == 1
    assert "Traceback" not in unreachable.stderr


def test_a_bad_log_format_stops_the_command_with_exit_2(cli: Cli) -> None:
    result = cli.run("migrate", ASYNC_JOBS_LOG_FORMAT="xml", ASYNC_JOBS_DB_DSN="memory://")
    assert result.returncode == 2
    assert "ASYNC_JOBS_LOG_FORMAT" in result.stderr
