"""Observability costs on this machine (reported, not asserted):

1. the store gauges (``job_gauges``, what ``/metrics`` reads at most every 5 s) with
   1,000,000 jobs in the table: the server's execution time of the query, from
   ``EXPLAIN (ANALYZE)``, and the round trip;
2. a worker draining no-op jobs (in this process) with metrics off, on, and on with an
   OpenTelemetry SDK recording every span into a no-op exporter; interleaved rounds, jobs/s.

    .venv/bin/python bench/observability.py --rows 1000000 --drain-jobs 5000 --rounds 3

Needs a local PostgreSQL where the user may create databases; uses (and recreates)
``async_jobs_bench_observe``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import time
from typing import Any

import asyncpg
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult

from async_jobs import JobApp
from async_jobs.app import EnqueueRequest
from async_jobs.core.metrics import GAUGE_COUNT_CAP, Metrics
from async_jobs.core.settings import Settings
from async_jobs.core.tracing import Tracing
from async_jobs.core.worker import WorkerConfig
from async_jobs.stores.postgres.store import QUERIES

ADMIN = "postgresql://postgres@127.0.0.1:5432/postgres"
NAME = "async_jobs_bench_observe"
UNFINISHED = "SELECT count(*) FROM async_jobs WHERE status NOT IN ('succeeded', 'failed')"
DSN = f"postgresql://postgres@127.0.0.1:5432/{NAME}"


async def recreate() -> None:
    admin = await asyncpg.connect(ADMIN)
    try:
        await admin.execute(f"DROP DATABASE IF EXISTS {NAME} WITH (FORCE)")
        await admin.execute(f"CREATE DATABASE {NAME}")
    finally:
        await admin.close()
    async with JobApp(DSN, metrics=Metrics.off()) as app:
        await app.migrate()


async def fill(rows: int) -> dict[str, int]:
    """``rows`` jobs: 1% pending (half due), 0.1% running, the rest succeeded; 5 use cases,
    50 tenants."""
    pending, running = rows // 100, rows // 1000
    conn = await asyncpg.connect(DSN)
    try:
        await conn.execute(
            """
            INSERT INTO async_jobs (id, tenant_id, use_case, type, max_attempts, run_at,
                delay_tolerance_seconds, deadline_at, status, attempts, started_at,
                finished_at, lease_token, lease_expires_at, worker_id)
            SELECT gen_random_uuid(), 't' || (g % 50), 'uc' || (g % 5), 'echo', 3,
                   now() - make_interval(secs => (g % 7200)) + CASE WHEN s = 'pending'
                       AND g % 2 = 0 THEN interval '1 hour' ELSE interval '0' END,
                   300, now() + interval '5 minutes',
                   s::async_jobs_state, CASE WHEN s = 'pending' THEN 0 ELSE 1 END,
                   CASE WHEN s = 'pending' THEN NULL ELSE now() END,
                   CASE WHEN s = 'succeeded' THEN now() END,
                   CASE WHEN s = 'running' THEN gen_random_uuid() END,
                   CASE WHEN s = 'running' THEN now() + interval '1 hour' END,
                   CASE WHEN s = 'running' THEN 'bench' END
            FROM generate_series(1, $1) AS g
            CROSS JOIN LATERAL (SELECT CASE WHEN g <= $2 THEN 'pending'
                                            WHEN g <= $2 + $3 THEN 'running'
                                            ELSE 'succeeded' END AS s) AS st
            """,
            rows,
            pending,
            running,
        )
        await conn.execute("VACUUM ANALYZE async_jobs")
    finally:
        await conn.close()
    return {"rows": rows, "pending": pending, "running": running}


async def gauges(repeat: int) -> dict[str, Any]:
    conn = await asyncpg.connect(DSN)
    try:
        sql = QUERIES["job_gauges"]
        await conn.fetch(sql, GAUGE_COUNT_CAP)  # warm the cache and the plan
        server_ms, round_trip_ms = [], []
        for _ in range(repeat):
            plan = await conn.fetchval(f"EXPLAIN (ANALYZE, FORMAT JSON) {sql}", GAUGE_COUNT_CAP)
            server_ms.append(json.loads(plan)[0]["Execution Time"])
            began = time.perf_counter()
            rows = await conn.fetch(sql, GAUGE_COUNT_CAP)
            round_trip_ms.append((time.perf_counter() - began) * 1000)
    finally:
        await conn.close()
    return {
        "cap": GAUGE_COUNT_CAP,
        "series": len(rows),
        "server_ms_median": round(statistics.median(server_ms), 2),
        "server_ms_max": round(max(server_ms), 2),
        "round_trip_ms_median": round(statistics.median(round_trip_ms), 2),
    }


class _Dropped(SpanExporter):
    def export(self, spans: Any) -> SpanExportResult:
        return SpanExportResult.SUCCESS


def _sdk() -> TracerProvider:
    """An OpenTelemetry SDK that records every span and exports it nowhere."""
    provider = TracerProvider()
    provider.add_span_processor(BatchSpanProcessor(_Dropped()))
    return provider


async def drain_once(jobs: int, mode: str, concurrency: int) -> float:
    conn = await asyncpg.connect(DSN)
    try:
        await conn.execute("TRUNCATE async_jobs CASCADE")
    finally:
        await conn.close()
    settings = Settings(db_dsn=DSN, max_concurrent={"default": 1_000_000})
    app = JobApp(
        settings=settings,
        metrics=Metrics.off() if mode == "off" else Metrics(),
        tracing=Tracing(tracer_provider=_sdk()) if mode == "otel" else Tracing.off(),
    )

    @app.job("noop")
    async def noop(ctx: Any, payload: dict[str, Any]) -> None:
        return None

    async with app:
        for start in range(0, jobs, 1000):
            await app.enqueue_many(
                [EnqueueRequest("noop", {"i": i}) for i in range(start, min(jobs, start + 1000))]
            )
        worker = app.worker(WorkerConfig(concurrency=concurrency))
        conn = await asyncpg.connect(DSN)
        try:
            began = time.perf_counter()
            running = asyncio.create_task(worker.run())
            while await conn.fetchval(UNFINISHED):  # noqa: ASYNC110 - a row count, no event
                await asyncio.sleep(0.02)  # wait-ok: polling interval of the drain's end
            elapsed = time.perf_counter() - began
        finally:
            await conn.close()
        worker.stop()
        await running
    return jobs / elapsed


async def drain(jobs: int, rounds: int, concurrency: int) -> dict[str, Any]:
    rates: dict[str, list[float]] = {"off": [], "on": [], "otel": []}
    for _ in range(rounds):  # interleaved: the machine's noise hits every mode alike
        for mode in rates:
            rates[mode].append(await drain_once(jobs, mode, concurrency))
            print(f"drain metrics {mode}: {rates[mode][-1]:.0f} jobs/s", file=sys.stderr)
    off = statistics.median(rates["off"])
    return {
        "jobs": jobs,
        "concurrency": concurrency,
        "modes": "off: no metrics, no tracing; on: metrics; otel: metrics and SDK spans",
        **{f"jobs_per_s_{mode}": [round(r) for r in found] for mode, found in rates.items()},
        "median_ratio_on_over_off": round(statistics.median(rates["on"]) / off, 3),
        "median_ratio_otel_over_off": round(statistics.median(rates["otel"]) / off, 3),
    }


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--repeat", type=int, default=20)
    parser.add_argument("--drain-jobs", type=int, default=5000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--concurrency", type=int, default=50)
    args = parser.parse_args()
    await recreate()
    report: dict[str, Any] = {"drain": await drain(args.drain_jobs, args.rounds, args.concurrency)}
    report["fill"] = await fill(args.rows)
    report["gauges"] = await gauges(args.repeat)
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    asyncio.run(main())
