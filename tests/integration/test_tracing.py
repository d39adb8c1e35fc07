"""Spans of one process with an SDK of the test's own: enqueue (PRODUCER), each attempt
(CONSUMER, child of the send span) and a webhook delivery (CLIENT, child of it too, its
``traceparent`` sent to the receiver); the job's log fields carry the trace ids."""

from __future__ import annotations

from typing import Any

import pytest

pytest.importorskip("opentelemetry.sdk")

from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

from async_jobs import Backoff, JobApp
from async_jobs.core.logs import job_fields
from async_jobs.core.tracing import Tracing
from async_jobs.core.webhooks import WebhookConfig, WebhookSender
from async_jobs.core.worker import WorkerConfig
from async_jobs.stores import store_from_dsn
from tests.integration.test_webhooks import FAST, Receiver, pump, settings, webhook_status


async def test_send_process_and_webhook_spans_make_one_trace(any_dsn: str) -> None:
    receiver = Receiver()
    await receiver.start()
    try:
        await _check_one_trace(any_dsn, receiver)
    finally:
        await receiver.stop()


async def _check_one_trace(any_dsn: str, receiver: Receiver) -> None:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracing = Tracing(tracer_provider=provider)
    jobs = JobApp(store=store_from_dsn(any_dsn), settings=settings(), tracing=tracing)
    seen: list[dict[str, Any]] = []

    @jobs.job("traced", use_case="reports", max_attempts=2, backoff=Backoff.constant(0, jitter=0))
    async def traced(ctx: Any, payload: dict[str, Any]) -> str:
        seen.append(dict(job_fields.get() or {}))
        if ctx.attempt == 1:
            raise ValueError("first attempt fails")
        return "done"

    async with jobs:
        await jobs.migrate()
        job = await jobs.enqueue("traced", {"secret": "never-in-a-span"}, webhook_url=receiver.url)
        await jobs.run_worker(WorkerConfig(burst=True, concurrency=1, limits=jobs.attempt_limits()))
        config = WebhookConfig.from_settings(jobs.settings, backoff=FAST)
        sender = WebhookSender(jobs.store, config, tracing=tracing)
        try:
            await pump(sender, lambda: webhook_status(jobs, job))
        finally:
            await sender.close()

    spans: list[ReadableSpan] = list(exporter.get_finished_spans())
    [send] = [s for s in spans if s.kind is SpanKind.PRODUCER]
    processes = sorted(
        (s for s in spans if s.kind is SpanKind.CONSUMER),
        key=lambda s: s.attributes["async_jobs.attempt"] if s.attributes else 0,
    )
    [client] = [s for s in spans if s.kind is SpanKind.CLIENT]
    assert send.name == "send traced"
    assert send.attributes is not None
    assert send.attributes["messaging.message.id"] == str(job.id)
    assert send.attributes["messaging.destination.name"] == "reports"
    trace_id = send.context.trace_id
    assert [s.name for s in processes] == ["process traced", "process traced"]
    for span in (*processes, client):
        assert span.context.trace_id == trace_id
        assert span.parent is not None and span.parent.span_id == send.context.span_id
    failed, succeeded = processes
    assert failed.status.status_code is StatusCode.ERROR
    assert [e.name for e in failed.events] == ["exception"]
    assert failed.events[0].attributes is not None
    assert failed.events[0].attributes["exception.type"] == "ValueError"
    assert succeeded.status.status_code is StatusCode.OK
    assert client.status.status_code is StatusCode.OK
    assert client.attributes is not None and client.attributes["http.response.status_code"] == 200
    # The receiver got the delivery span's context; a handler's logs got the attempt's.
    sent = receiver.requests[0]["headers"]["traceparent"]
    assert sent.startswith(f"00-{trace_id:032x}-{client.context.span_id:016x}-")
    assert [f["span_id"] for f in seen] == [f"{p.context.span_id:016x}" for p in processes]
    assert {f["trace_id"] for f in seen} == {f"{trace_id:032x}"}
    for span in spans:
        assert "never-in-a-span" not in str(span.attributes) + str(span.events)
