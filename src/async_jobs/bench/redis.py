"""``async-jobs bench --transport redis``: the drain through Redis Streams next to the direct
transport's drain measured in the same run, the start latency on redis, and where the time
goes.

1. direct: N jobs enqueued in batches, ONE worker process (``transport=direct``) drains them;
2. redis: the same N jobs, ONE scheduler process and ONE worker process (it reads, claims,
   runs, records, acknowledges) with ``transport=redis``; whichever leads dispatches (the
   worker, started first, usually does). The clock starts when both printed their ready
   line and stops when the table shows all N terminal; every stream must then be empty. As
   for the direct drain, the use case is uncapped; the dispatch window is the default
   (``ASYNC_JOBS_DISPATCH_WINDOW``, 1,000), larger than the worker's prefetch, so the stream
   never runs dry while the dispatcher waits for outcomes (a window equal to what the
   worker holds makes the drain stop and go: each dispatch waits for the previous batch's
   outcomes).
3. latency (redis): jobs enqueued one at a time to an idle worker and scheduler; the time
   from enqueue to the handler's start.

``--rounds`` rounds (default 3) alternate which drain goes first; medians are reported, with
their ratio. During each redis drain the CPU time of the worker, the scheduler, Redis (when
the benchmark started it) and PostgreSQL is read from ``/proc`` and given per job.

Without ``--redis-url`` the benchmark starts a ``redis-server`` of its own (no persistence)
on a free port and stops it at the end.
"""

from __future__ import annotations

import contextlib
import dataclasses
import tempfile
import uuid
from collections.abc import Iterator
from typing import Any

from async_jobs.bench.broker import bottleneck, broker_drain, local_server, until_empty
from async_jobs.bench.direct import drain, latency
from async_jobs.bench.harness import (
    BenchOptions,
    BenchResult,
    base_settings,
    enqueue_batch,
    latency_metrics,
    opened,
    prepared,
    progress,
    scheduler_argv,
    worker_env,
)
from async_jobs.bench.scale import truncate
from async_jobs.core.settings import DEFAULT_DISPATCH_WINDOW


async def bench_redis(o: BenchOptions) -> BenchResult:
    from async_jobs.core.settings import Settings

    await prepared(o)
    with _redis_server(o.redis_url) as (url, server_pid):
        progress(f"Redis {url}{' (started here)' if server_pid else ''}")
        settings = Settings(db_dsn=o.dsn, transport="redis", redis_url=url)
        async with opened(o, settings) as (conn, app, pg_version):
            directs: list[tuple[float, dict[str, float]]] = []
            redis: list[tuple[float, dict[str, float]]] = []
            for round_no in range(o.rounds):  # alternating: the machine's speed drifts
                if round_no % 2 == 0:
                    directs.append(await _direct_round(app, conn, o))
                redis.append(await _redis_round(app, conn, o, url, server_pid))
                if round_no % 2 == 1:
                    directs.append(await _direct_round(app, conn, o))
            await truncate(conn)
            env = _env(o, url, f"bench-{uuid.uuid4().hex[:8]}")
            latencies = await latency(app, conn, o, env, scheduler_argv())
            await truncate(conn)
    direct, direct_cpu = _median_round(directs)
    drain_rate, cpu = _median_round(redis)
    metrics = {
        "drain_jobs_per_s": drain_rate,
        "direct_drain_jobs_per_s": direct,
        "redis_vs_direct": drain_rate / direct,
        **latency_metrics(latencies),
    }
    details: dict[str, Any] = {
        "cpu_share": cpu,
        "cpu_ms_per_job": _per_job_ms(cpu, drain_rate),
        "direct_cpu_share": direct_cpu,
        "direct_cpu_ms_per_job": _per_job_ms(direct_cpu, direct),
        "bottleneck": bottleneck(cpu),
        "redis": "redis-server started by the benchmark" if server_pid else "given",
        "rounds": o.rounds,
        "drain_samples": [rate for rate, _ in redis],
        "direct_drain_samples": [rate for rate, _ in directs],
        "window": DEFAULT_DISPATCH_WINDOW,
        "latency_samples": len(latencies),
    }
    settings_out = base_settings(o, postgres_version=pg_version, system="async-jobs redis")
    return BenchResult(metrics, settings_out, details)


def _median_round(rounds: list[tuple[float, dict[str, float]]]) -> tuple[float, dict[str, float]]:
    """The round of the median rate (the lower middle one of an even count), with its CPU."""
    return sorted(rounds, key=lambda r: r[0])[(len(rounds) - 1) // 2]


def _per_job_ms(cpu: dict[str, float], rate: float) -> dict[str, float]:
    return {k: v / rate * 1000 for k, v in cpu.items() if k != "machine"}


async def _direct_round(app: Any, conn: Any, o: BenchOptions) -> tuple[float, dict[str, float]]:
    await truncate(conn)
    await enqueue_batch(app, o.jobs, o.batch_size)
    cpu: dict[str, float] = {}
    rate, _, _ = await drain(conn, dataclasses.replace(o, transport="direct"), cpu)
    await truncate(conn)
    return rate, cpu


def _env(o: BenchOptions, url: str, prefix: str) -> dict[str, str]:
    env = worker_env(o)
    env.update(
        ASYNC_JOBS_TRANSPORT="redis",
        ASYNC_JOBS_REDIS_URL=url,
        ASYNC_JOBS_REDIS_PREFIX=prefix,
        ASYNC_JOBS_DISPATCH_WINDOW=str(DEFAULT_DISPATCH_WINDOW),
    )
    return env


async def _redis_round(
    app: Any, conn: Any, o: BenchOptions, url: str, server_pid: int | None
) -> tuple[float, dict[str, float]]:
    from async_jobs.transports.redis import RedisConfig, info

    await truncate(conn)
    await enqueue_batch(app, o.jobs, o.batch_size)
    prefix = f"bench-{uuid.uuid4().hex[:8]}"
    config = RedisConfig(url=url, prefix=prefix)

    async def emptied() -> None:
        await until_empty(lambda: info(config), _empty, "the stream still holds entries: ")

    result = await broker_drain(
        conn,
        o,
        label="redis drain",
        env=_env(o, url, prefix),
        server=("redis", server_pid),
        emptied=emptied,
    )
    await truncate(conn)
    return result


def _empty(rows: list[dict[str, Any]]) -> bool:
    return not any(r["length"] or r["pending"] for r in rows)


@contextlib.contextmanager
def _redis_server(url: str | None) -> Iterator[tuple[str, int | None]]:
    """The given URL, or a ``redis-server`` started here on a free port: (url, its pid)."""
    if url:
        yield url, None
        return
    workdir = tempfile.mkdtemp(prefix="aj-bench-redis-")

    def command(port: int) -> tuple[list[str], dict[str, str]]:
        argv = ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", ""]
        return [*argv, "--appendonly", "no", "--dir", workdir], {}

    with local_server(
        "redis-server", command, missing="redis-server is not installed; or give --redis-url"
    ) as (port, pid):
        yield f"redis://127.0.0.1:{port}/0", pid
