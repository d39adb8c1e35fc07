"""Metrics labels stay bounded, transports count through one helper, the probes answer,
log settings are checked and JSON lines carry a job's fields."""

from __future__ import annotations

import io
import json
import logging
import subprocess
import sys
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from async_jobs import JobApp
from async_jobs.api import OpsServer, create_api
from async_jobs.core.logs import JsonFormatter, fields_of_job, job_fields, logging_options
from async_jobs.core.metrics import Metrics, MetricsConfig, TransportCounts
from async_jobs.core.settings import Settings
from async_jobs.domain.errors import ConfigurationError


def _samples(text: bytes) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text.decode())
        for s in family.samples
    }


def _app(**metrics: Any) -> JobApp:
    app = JobApp("memory://", metrics=Metrics(MetricsConfig(**metrics)))

    @app.job("known", use_case="mail")
    async def known(ctx: Any, payload: dict[str, Any]) -> None:
        return None

    return app


async def test_types_without_a_handler_are_counted_as_other() -> None:
    app = _app()
    app._builder.strict_types = False
    async with app:
        await app.enqueue("known")
        await app.enqueue("made_up_by_a_client", use_case="mail")
        found = _samples(await app.metrics.expose())
    assert found[("async_jobs_jobs_enqueued_total", (("type", "known"), ("use_case", "mail")))] == 1
    assert found[("async_jobs_jobs_enqueued_total", (("type", "other"), ("use_case", "mail")))] == 1


async def test_tenants_are_labels_only_when_asked_and_fold_past_the_cap() -> None:
    app = _app(tenant_label=True, tenant_cap=2)
    async with app:
        for tenant in ("t1", "t2", "t3", "t4"):
            await app.enqueue("known", tenant_id=tenant)
        found = _samples(await app.metrics.expose())
    tenants = {
        dict(labels)["tenant_id"]: v
        for (name, labels), v in found.items()
        if name == "async_jobs_jobs_enqueued_total"
    }
    assert tenants == {"t1": 1, "t2": 1, "other": 2}
    async with _app() as plain:
        await plain.enqueue("known", tenant_id="t1")
        labels = [dict(k[1]) for k in _samples(await plain.metrics.expose())]
    assert all("tenant_id" not in label for label in labels)


def test_the_metrics_settings_are_checked() -> None:
    assert Settings.from_env({"ASYNC_JOBS_METRICS_TENANT_LABEL": "true"}).metrics_tenant_label
    assert not Settings.from_env({}).metrics_tenant_label
    with pytest.raises(ConfigurationError, match="TENANT_LABEL"):
        Settings.from_env({"ASYNC_JOBS_METRICS_TENANT_LABEL": "maybe"})
    with pytest.raises(ConfigurationError, match="TENANT_CAP"):
        Settings.from_env({"ASYNC_JOBS_METRICS_TENANT_CAP": "0"})
    with pytest.raises(ConfigurationError, match="METRICS_PORT"):
        Settings.from_env({"ASYNC_JOBS_METRICS_PORT": "99999"})


async def test_a_transport_counts_its_events_through_the_shared_helper() -> None:
    metrics = Metrics()
    counts = TransportCounts("carrier", metrics)
    counts["sent"] += 3
    counts["received"] += 2
    counts["malformed"] += 1
    counts["claimed"] += 5  # the transport's own figure, not a metric event
    found = _samples(await metrics.expose())
    events = {
        dict(labels)["event"]: v
        for (name, labels), v in found.items()
        if name == "async_jobs_transport_messages_total"
    }
    assert events == {"sent": 3, "received": 2, "invalid": 1}
    assert counts["claimed"] == 5


async def test_metrics_off_count_nothing() -> None:
    app = JobApp("memory://", metrics=Metrics.off(), strict_types=False)
    async with app:
        await app.enqueue("anything")
        found = _samples(await app.metrics.expose())
    assert not [k for k in found if k[0] == "async_jobs_jobs_enqueued_total"]


async def test_the_api_serves_metrics_and_readiness_without_a_token() -> None:
    app = _app()
    api = create_api(app)
    transport = httpx.ASGITransport(app=api)
    async with app, httpx.AsyncClient(transport=transport, base_url="http://t") as client:
        await app.enqueue("known")
        metrics = await client.get("/metrics")
        ready = await client.get("/health/ready")
    assert metrics.status_code == 200
    found = _samples(metrics.content)
    assert found[("async_jobs_jobs", (("state", "pending"), ("use_case", "mail")))] == 1
    assert ready.status_code == 200
    assert ready.json()["components"]["store"]["status"] == "ok"


async def test_the_ops_server_answers_probes_and_refuses_the_rest() -> None:
    app = _app()
    async with app, OpsServer(app, "127.0.0.1", 0) as server:
        base = f"http://127.0.0.1:{server.port}"
        async with httpx.AsyncClient(base_url=base) as client:
            assert (await client.get("/health")).status_code == 200
            assert (await client.get("/health/ready")).json()["status"] == "ok"
            assert (await client.get("/metrics")).text.startswith("# HELP")
            missing = await client.get("/nothing")
            posted = await client.post("/metrics")
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "not_found"
    assert posted.status_code == 405


async def test_readiness_says_which_component_is_down() -> None:
    app = _app()
    async with app:
        await app.store.close()
        readiness = await app.readiness()
    body = readiness.to_json()
    assert readiness.http_status == 503
    assert body["components"]["store"]["status"] == "unavailable"
    assert body["components"]["transport"]["status"] == "ok"


def test_log_settings_are_checked() -> None:
    assert logging_options(None, None, {}) == ("text", "INFO")
    assert logging_options(None, None, {"ASYNC_JOBS_LOG_FORMAT": "JSON"}) == ("json", "INFO")
    assert logging_options("text", "debug", {"ASYNC_JOBS_LOG_FORMAT": "json"}) == ("text", "DEBUG")
    with pytest.raises(ConfigurationError, match="ASYNC_JOBS_LOG_FORMAT"):
        logging_options(None, None, {"ASYNC_JOBS_LOG_FORMAT": "xml"})
    with pytest.raises(ConfigurationError, match="log level"):
        logging_options(None, "loud", {})


def test_a_json_line_carries_the_job_fields_of_its_context() -> None:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter())
    logger = logging.getLogger("test.observability")
    logger.addHandler(handler)
    try:
        logger.warning("outside")
        token = job_fields.set(fields_of_job("j-1", 2, "known", "mail", "t1", "w-1"))
        try:
            logger.warning("inside %s", "a job")
        finally:
            job_fields.reset(token)
    finally:
        logger.removeHandler(handler)
    outside, inside = (json.loads(line) for line in stream.getvalue().splitlines())
    assert "job_id" not in outside
    assert inside["message"] == "inside a job"
    assert (inside["job_id"], inside["attempt"], inside["worker_id"]) == ("j-1", 2, "w-1")


def test_without_opentelemetry_nothing_imports_it_and_jobs_still_run() -> None:
    """The [otel] extra is optional: with opentelemetry unimportable, jobs enqueue and run,
    tracing is off, and no opentelemetry module was loaded."""
    script = """
import asyncio, sys
sys.modules["opentelemetry"] = None  # as if not installed: importing it raises ImportError
from async_jobs import JobApp
from async_jobs.core.worker import WorkerConfig

async def main():
    app = JobApp("memory://", handler_modules=["async_jobs.demo"])
    async with app:
        job = await app.enqueue("echo", {"a": 1})
        await app.run_worker(WorkerConfig(burst=True))
        assert (await app.get_job(job.id)).status.value == "succeeded"
    assert not app.tracing.enabled
    loaded = [m for m in sys.modules if m.startswith("opentelemetry") and sys.modules[m]]
    assert not loaded, loaded
    print("ok")

asyncio.run(main())
"""
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "ok"


def test_with_the_api_alone_spans_are_skipped_unless_a_context_passes_on() -> None:
    """opentelemetry-api without an SDK makes no spans: enqueue and attempts skip the hooks
    (they cost a worker a fifth of a no-op job), except to pass a current trace on, until an
    SDK's provider is set."""
    pytest.importorskip("opentelemetry.sdk")
    script = """
import asyncio, json
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.trace import NonRecordingSpan, SpanContext, TraceFlags
from async_jobs import JobApp
from async_jobs.core.tracing import Tracing

async def main():
    app = JobApp("memory://", handler_modules=["async_jobs.demo"])
    tracing = app.tracing
    assert tracing.enabled and not tracing.sending()
    async with app:
        plain = await app.enqueue("echo", {})
        assert plain.trace_context is None and not tracing.processing(plain)
        remote = SpanContext(0xABC, 0xDEF, is_remote=True, trace_flags=TraceFlags(1))
        with trace.use_span(NonRecordingSpan(remote)):
            assert tracing.sending()
            carried = await app.enqueue("echo", {})
        parent = json.loads(carried.trace_context)["traceparent"]
        assert parent.startswith("00-00000000000000000000000000000abc-"), parent
        assert tracing.processing(carried)
        assert Tracing(tracer_provider=TracerProvider()).sending()
        trace.set_tracer_provider(TracerProvider())
        assert tracing.sending() and tracing.processing(plain)
    print("ok")

asyncio.run(main())
"""
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=False
    )
    assert done.stdout.strip() == "ok", done.stderr
