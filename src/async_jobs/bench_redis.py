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
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from typing import Any

from async_jobs.bench import (
    HANDLERS_MODULE,
    READY_PREFIX,
    BenchError,
    BenchOptions,
    BenchResult,
    _drain,
    _enqueue_batch,
    _latency,
    _truncate,
    _unfinished,
    _worker_argv,
    _worker_env,
    base_settings,
    check_all_succeeded,
    ensure_alone,
    latency_metrics,
    prepare_database,
    progress,
    redact_dsn,
    wait_drained,
    worker_process,
)
from async_jobs.bench_sqs import SCHEDULER_READY, bottleneck, cpu_meter
from async_jobs.core.settings import DEFAULT_DISPATCH_WINDOW


async def bench_redis(o: BenchOptions) -> BenchResult:
    import asyncpg

    from async_jobs.app import JobApp
    from async_jobs.core.settings import Settings

    created = await prepare_database(o.dsn, recreate=o.recreate)
    progress(f"database {redact_dsn(o.dsn)}{' (created)' if created else ''}")
    with _redis_server(o.redis_url) as (url, server_pid):
        progress(f"Redis {url}{' (started here)' if server_pid else ''}")
        conn = await asyncpg.connect(o.dsn)
        try:
            await ensure_alone(conn)
            pg_version = str(await conn.fetchval("SHOW server_version"))
            settings = Settings(db_dsn=o.dsn, transport="redis", redis_url=url)
            app = JobApp(settings=settings, handler_modules=[HANDLERS_MODULE])
            async with app:
                await app.migrate()
                directs: list[float] = []
                redis: list[tuple[float, dict[str, float]]] = []
                for round_no in range(o.rounds):  # alternating: the machine's speed drifts
                    if round_no % 2 == 0:
                        directs.append(await _direct_round(app, conn, o))
                    redis.append(await _redis_round(app, conn, o, url, server_pid))
                    if round_no % 2 == 1:
                        directs.append(await _direct_round(app, conn, o))
                await _truncate(conn)
                env = _env(o, url, f"bench-{uuid.uuid4().hex[:8]}")
                latencies = await _latency(app, conn, o, env, _scheduler_argv())
                await _truncate(conn)
        finally:
            await conn.close()
    direct = statistics.median(directs)
    drain, cpu = sorted(redis)[(len(redis) - 1) // 2]  # the median round (lower middle)
    metrics = {
        "drain_jobs_per_s": drain,
        "direct_drain_jobs_per_s": direct,
        "redis_vs_direct": drain / direct,
        **latency_metrics(latencies),
    }
    per_job_ms = {k: v / drain * 1000 for k, v in cpu.items() if k != "machine"}
    details: dict[str, Any] = {
        "cpu_share": cpu,
        "cpu_ms_per_job": per_job_ms,
        "bottleneck": bottleneck(cpu),
        "redis": "redis-server started by the benchmark" if server_pid else "given",
        "rounds": o.rounds,
        "drain_samples": [rate for rate, _ in redis],
        "direct_drain_samples": directs,
        "window": DEFAULT_DISPATCH_WINDOW,
        "latency_samples": len(latencies),
    }
    settings_out = base_settings(o, postgres_version=pg_version, system="async-jobs redis")
    return BenchResult(metrics, settings_out, details)


async def _direct_round(app: Any, conn: Any, o: BenchOptions) -> float:
    await _truncate(conn)
    await _enqueue_batch(app, o.jobs, o.batch_size)
    direct = BenchOptions(**{**_fields(o), "transport": "direct"})
    rate, _, _ = await _drain(conn, direct)
    await _truncate(conn)
    return rate


def _fields(o: BenchOptions) -> dict[str, Any]:
    return {name: getattr(o, name) for name in o.__dataclass_fields__}


def _env(o: BenchOptions, url: str, prefix: str) -> dict[str, str]:
    env = _worker_env(o)
    env.update(
        ASYNC_JOBS_TRANSPORT="redis",
        ASYNC_JOBS_REDIS_URL=url,
        ASYNC_JOBS_REDIS_PREFIX=prefix,
        ASYNC_JOBS_DISPATCH_WINDOW=str(DEFAULT_DISPATCH_WINDOW),
    )
    return env


def _scheduler_argv() -> list[str]:
    return [
        sys.executable,
        "-m",
        "async_jobs",
        "--log-level",
        "WARNING",
        "scheduler",
        "--handlers",
        HANDLERS_MODULE,
    ]


async def _redis_round(
    app: Any, conn: Any, o: BenchOptions, url: str, server_pid: int | None
) -> tuple[float, dict[str, float]]:
    from async_jobs.transports.redis import RedisConfig, info

    await _truncate(conn)
    await _enqueue_batch(app, o.jobs, o.batch_size)
    queued = await _unfinished(conn)
    if queued != o.jobs:
        raise BenchError(f"expected {o.jobs} queued jobs before the drain, found {queued}")
    await conn.execute("ANALYZE async_jobs")
    progress(
        f"redis drain: {o.jobs} jobs, one scheduler and one worker process, concurrency "
        f"{o.concurrency}, at most {DEFAULT_DISPATCH_WINDOW} dispatched"
    )
    prefix = f"bench-{uuid.uuid4().hex[:8]}"
    env = _env(o, url, prefix)
    async with (
        worker_process(
            "async-jobs worker", _worker_argv(o.concurrency), env=env, ready=READY_PREFIX
        ) as worker,
        worker_process(
            "async-jobs scheduler", _scheduler_argv(), env=env, ready=SCHEDULER_READY
        ) as scheduler,
    ):
        started = max(await worker.wait_ready(), await scheduler.wait_ready())
        pids = {"worker": [worker.pid], "scheduler": [scheduler.pid]}
        if server_pid is not None:
            pids["redis"] = [server_pid]
        with cpu_meter(pids) as cpu:
            finished = await wait_drained(conn, o, started, worker)
        scheduler.check_alive()
        config = RedisConfig(url=url, prefix=prefix)
        deadline = time.monotonic() + 30
        while _holding(rows := await info(config)):
            if time.monotonic() > deadline:
                raise BenchError(f"the stream still holds entries: {rows}")
            await _pause(0.1)
    await check_all_succeeded(conn, o.jobs)
    await _truncate(conn)
    return o.jobs / (finished - started), cpu()


def _holding(rows: list[dict[str, Any]]) -> bool:
    return any(r["length"] or r["pending"] for r in rows)


async def _pause(seconds: float) -> None:
    import asyncio

    await asyncio.sleep(seconds)  # wait-ok: polling interval of a deadline-bound wait


@contextlib.contextmanager
def _redis_server(url: str | None) -> Iterator[tuple[str, int | None]]:
    """The given URL, or a ``redis-server`` started here on a free port: (url, its pid)."""
    if url:
        yield url, None
        return
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    workdir = tempfile.mkdtemp(prefix="aj-bench-redis-")
    argv = ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", ""]
    argv += ["--appendonly", "no", "--dir", workdir]
    try:
        proc = subprocess.Popen(  # noqa: S603 - our own command line, no shell
            argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
    except FileNotFoundError:
        raise BenchError("redis-server is not installed; or give --redis-url") from None
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                    break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise BenchError("redis-server did not start") from None
                time.sleep(0.05)  # wait-ok: polling interval of a deadline-bound wait
        yield f"redis://127.0.0.1:{port}/0", proc.pid
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
