"""Traces across processes: an HTTP request with a ``traceparent`` enqueues a job through a
real ``api`` process; a real ``worker`` process (direct, and sqs with a ``scheduler``)
runs it. Each process exports its spans to a file (an OpenTelemetry SDK installed by a
``sitecustomize`` the test writes, as an application would install its own)."""

from __future__ import annotations

import json
import subprocess
import uuid
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.acceptance.conftest import Cli
from tests.acceptance.test_cli import poll, wait_for_line
from tests.helpers import SqsServer, free_port

pytest.importorskip("opentelemetry.sdk")

REPO = Path(__file__).resolve().parents[2]
TRACE_ID = uuid.uuid4().hex
CALLER_SPAN = uuid.uuid4().hex[:16]

SITECUSTOMIZE = """
import json, os
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor, SpanExporter, SpanExportResult


class FileExporter(SpanExporter):
    def export(self, spans):
        with open(os.environ["OBS_SPANS_FILE"], "a", encoding="utf-8") as out:
            for s in spans:
                parent = s.parent.span_id if s.parent is not None else None
                out.write(json.dumps({
                    "name": s.name,
                    "kind": s.kind.name,
                    "trace_id": f"{s.context.trace_id:032x}",
                    "span_id": f"{s.context.span_id:016x}",
                    "parent_span_id": None if parent is None else f"{parent:016x}",
                    "attributes": dict(s.attributes or {}),
                    "status": s.status.status_code.name,
                    "events": [e.name for e in s.events],
                    "pid": os.getpid(),
                }) + "\\n")
        return SpanExportResult.SUCCESS


provider = TracerProvider()
provider.add_span_processor(SimpleSpanProcessor(FileExporter()))
trace.set_tracer_provider(provider)
"""


def _spans(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _env(tmp_path: Path, dsn: str, **extra: str) -> dict[str, str]:
    site = tmp_path / "site"
    site.mkdir(exist_ok=True)
    (site / "sitecustomize.py").write_text(SITECUSTOMIZE)
    return {
        "ASYNC_JOBS_DB_DSN": dsn,
        "ASYNC_JOBS_HANDLERS": "tests.acceptance.observe_jobs",
        "ASYNC_JOBS_POLL_INTERVAL_SECONDS": "0.1",
        "ASYNC_JOBS_SCHEDULER_INTERVAL_SECONDS": "0.2",
        "ASYNC_JOBS_LEADER_LEASE_SECONDS": "2",
        "OBS_SPANS_FILE": str(tmp_path / "spans.jsonl"),
        "PYTHONPATH": f"{site}:{REPO}",
        **extra,
    }


def _start(cli: Cli, env: dict[str, str], *args: str) -> subprocess.Popen[str]:
    proc = cli.start(*args, **env)
    wait_for_line(proc, "async-jobs api:" if args[0] == "api" else "ready", timeout=30)
    return proc


def _run_traced_workload(cli: Cli, env: dict[str, str], port: int) -> tuple[str, str]:
    base = f"http://127.0.0.1:{port}"
    traceparent = f"00-{TRACE_ID}-{CALLER_SPAN}-01"
    with httpx.Client(base_url=base, timeout=10) as client:
        ok = client.post(
            "/jobs", json={"type": "obs_ok", "payload": {}}, headers={"traceparent": traceparent}
        ).json()["id"]
        boom = client.post(
            "/jobs", json={"type": "obs_boom", "payload": {}}, headers={"traceparent": traceparent}
        ).json()["id"]
        for job_id, status in ((ok, "succeeded"), (boom, "failed")):
            poll(lambda j=job_id, s=status: client.get(f"/jobs/{j}").json()["status"] == s, 30)
    return ok, boom


def _check_trace(spans_file: Path, ok: str, boom: str, api_pid: int, worker_pid: int) -> None:
    def process_spans() -> list[dict[str, Any]]:
        return [s for s in _spans(spans_file) if s["name"].startswith("process ")]

    poll(lambda: len(process_spans()) >= 3, timeout=10)  # 1 + 2 attempts
    spans = _spans(spans_file)
    mine = [s for s in spans if s["trace_id"] == TRACE_ID]
    sends = {s["attributes"]["messaging.message.id"]: s for s in mine if s["kind"] == "PRODUCER"}
    assert set(sends) == {ok, boom}
    by_id = {s["span_id"]: s for s in mine}
    for send in sends.values():
        assert send["pid"] == api_pid
        # Up from the send span: the request's server span (when the web framework traces
        # requests itself) and then the caller's span, whose traceparent the request sent.
        parent = send["parent_span_id"]
        while parent in by_id:
            parent = by_id[parent]["parent_span_id"]
        assert parent == CALLER_SPAN
    processes = [s for s in mine if s["kind"] == "CONSUMER"]
    assert {s["pid"] for s in processes} == {worker_pid}
    by_job: dict[str, list[dict[str, Any]]] = {}
    for span in processes:
        by_job.setdefault(span["attributes"]["messaging.message.id"], []).append(span)
    [done] = by_job[ok]
    assert done["name"] == "process obs_ok" and done["status"] == "OK"
    assert done["parent_span_id"] == sends[ok]["span_id"]  # a child of the send span
    attributes = done["attributes"]
    assert attributes["messaging.system"] == "async_jobs"
    assert attributes["messaging.destination.name"] == "obs"
    assert attributes["messaging.operation.type"] == "process"
    assert attributes["async_jobs.attempt"] == 1
    assert attributes["async_jobs.tenant_id"] == "default"
    attempts = sorted(by_job[boom], key=lambda s: s["attributes"]["async_jobs.attempt"])
    assert [s["attributes"]["async_jobs.attempt"] for s in attempts] == [1, 2]
    assert all(s["status"] == "ERROR" and "exception" in s["events"] for s in attempts)
    assert all(s["parent_span_id"] == sends[boom]["span_id"] for s in attempts)


def test_the_worker_span_is_in_the_trace_of_the_request_that_enqueued(
    cli: Cli, pg_database: str, tmp_path: Path
) -> None:
    env = _env(tmp_path, pg_database)
    port = free_port()
    api = _start(cli, env, "api", "--port", str(port))
    worker = _start(cli, env, "worker")
    ok, boom = _run_traced_workload(cli, env, port)
    _check_trace(tmp_path / "spans.jsonl", ok, boom, api.pid, worker.pid)


def test_the_trace_goes_on_over_the_sqs_transport(
    cli: Cli, pg_database: str, sqs_server: SqsServer, tmp_path: Path
) -> None:
    env = _env(
        tmp_path,
        pg_database,
        ASYNC_JOBS_TRANSPORT="sqs",
        ASYNC_JOBS_SQS_ENDPOINT_URL=sqs_server.endpoint,
        ASYNC_JOBS_SQS_QUEUE_OBS=sqs_server.queue_url(f"obs-{uuid.uuid4().hex[:8]}"),
        ASYNC_JOBS_SQS_LONG_POLL_SECONDS="1",
    )
    made = cli.run("sqs", "create-queues", **env)
    assert made.returncode == 0, made.stderr
    port = free_port()
    api = _start(cli, env, "api", "--port", str(port))
    _start(cli, env, "scheduler")
    worker = _start(cli, env, "worker")
    ok, boom = _run_traced_workload(cli, env, port)
    _check_trace(tmp_path / "spans.jsonl", ok, boom, api.pid, worker.pid)
