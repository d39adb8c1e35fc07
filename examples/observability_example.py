"""Metrics, readiness, JSON logs and (with the [otel] extra and its SDK) traces, in one
process: run two jobs, print the trace of each attempt, the readiness answer and a few
Prometheus samples.

python examples/observability_example.py
"""

from __future__ import annotations

import asyncio
import logging
import os
import tempfile
from typing import Any

from async_jobs import JobApp, JobContext, WorkerConfig
from async_jobs.core.logs import configure_logging
from async_jobs.core.tracing import Tracing

log = logging.getLogger("example.handlers")


def tracing() -> Tracing:
    """Spans printed as they end, when the OpenTelemetry SDK is installed."""
    try:
        from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
        from opentelemetry.sdk.trace.export import (
            SimpleSpanProcessor,
            SpanExporter,
            SpanExportResult,
        )
    except ImportError:
        return Tracing.off()

    class Printed(SpanExporter):
        def export(self, spans: Any) -> SpanExportResult:
            for span in spans:
                assert isinstance(span, ReadableSpan) and span.context is not None
                print(f"span {span.name} ({span.kind.name}) trace {span.context.trace_id:032x}")
            return SpanExportResult.SUCCESS

    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(Printed()))
    return Tracing(tracer_provider=provider)


async def main() -> None:
    configure_logging("json", "INFO")  # what --log-format json does for the CLI
    default_dsn = f"sqlite:///{tempfile.mkdtemp()}/example.db"
    app = JobApp(os.environ.get("ASYNC_JOBS_DB_DSN", default_dsn), tracing=tracing())

    @app.job("resize", use_case="images")
    async def resize(ctx: JobContext, payload: dict[str, Any]) -> dict[str, int]:
        log.info("resizing")  # a JSON line with job_id, attempt, type, use_case...
        return {"width": payload["width"] // 2}

    async with app:
        await app.migrate()
        app.serve_store_gauges()  # what the API and the scheduler report
        for width in (640, 1024):
            await app.enqueue("resize", {"width": width})
        await app.run_worker(WorkerConfig(burst=True))
        print("ready:", (await app.readiness()).to_json()["status"])
        for line in (await app.metrics.expose()).decode().splitlines():
            if line.startswith(("async_jobs_jobs_finished_total", "async_jobs_jobs_enqueued")):
                print(line)


if __name__ == "__main__":
    asyncio.run(main())
