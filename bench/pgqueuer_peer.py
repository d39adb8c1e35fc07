"""PgQueuer 1.6 under the five scenarios of ``async-jobs bench``, measured by the same code
(the helpers of ``async_jobs.bench``) and written out with the same JSON keys.

    python bench/pgqueuer_peer.py --jobs 10000 --concurrency 50 --json out.json

It runs in its own database (default ``async_jobs_bench_pgq``), created when missing, with
PgQueuer's schema installed by its own ``Queries.install``. Each scenario starts from empty
PgQueuer tables.

- enqueue, one call per job: ``await queries.enqueue("noop", payload)``;
- enqueue in batches: ``await queries.enqueue([...], [...], [...])``, lists of 1,000;
- drain: ONE worker process (``python bench/pgqueuer_peer.py worker C``: what ``pgq run
  --max-concurrent-tasks C --batch-size C/2`` does, see ``worker_main``; C/2 is the largest
  batch PgQueuer allows under that cap); the clock starts at the ready line the worker
  prints once PgQueuer has verified its schema, and stops when the queue table is empty
  (PgQueuer deletes a job when it logs its completion);
- latency: an idle worker process of concurrency 10; the handler prints its start time
  (``time.time()``) with the enqueue time it got in the payload;
- the worker's VmHWM at the end of the drain.

The bottom half of this file is the worker process, so the top level imports only what the
worker needs (``async_jobs`` is imported by the benchmark half only).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import asyncpg
from pgqueuer.db import AsyncpgDriver
from pgqueuer.models import Job
from pgqueuer.qm import QueueManager
from pgqueuer.queries import Queries

if TYPE_CHECKING:
    from async_jobs.bench import BenchOptions, BenchResult

PEER_DSN = "postgresql://postgres@127.0.0.1:5432/async_jobs_bench_pgq"
DSN_ENV = "PGQUEUER_BENCH_DSN"
READY = "pgqueuer bench worker ready"
STARTED_TAG = "bench-started"


def peer_name() -> str:
    from importlib import metadata

    return f"pgqueuer {metadata.version('pgqueuer')}"


# -- the benchmark -----------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["worker"]:
        return worker_main(int(argv[1]))
    from async_jobs import bench

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    bench.add_common_options(parser, default_dsn=os.environ.get(DSN_ENV) or PEER_DSN)
    args = parser.parse_args(argv)
    try:
        options = bench.BenchOptions.from_args(args)
        options = _with_transport(options)
        if options.concurrency < 2 or options.latency_concurrency < 2:
            raise bench.BenchUsageError(
                "PgQueuer needs a concurrency of at least 2 (max_concurrent_tasks must be "
                "at least twice its batch size)"
            )
        result = bench.run_async(_bench(options))
    except bench.BenchUsageError as exc:
        print(f"pgqueuer_peer: error: {exc}", file=sys.stderr)
        return 2
    except (bench.BenchError, OSError) as exc:
        print(f"pgqueuer_peer: error: {exc}", file=sys.stderr)
        return 1
    print(bench.render_table(peer_name(), result), flush=True)
    if options.json_path:
        bench.write_json(options.json_path, result)
    return 0


def _with_transport(options: BenchOptions) -> BenchOptions:
    import dataclasses

    return dataclasses.replace(options, transport="pgqueuer (LISTEN/NOTIFY + polling)")


async def _bench(o: BenchOptions) -> BenchResult:
    from async_jobs import bench

    created = await bench.prepare_database(o.dsn, recreate=o.recreate)
    bench.progress(f"pgqueuer database {bench.redact_dsn(o.dsn)}{' (created)' if created else ''}")
    conn = await asyncpg.connect(o.dsn)
    try:
        await bench.ensure_alone(conn)
        queries = Queries(AsyncpgDriver(conn))
        if not await queries.schema_is_installed():
            await queries.install()
        admin = await asyncpg.connect(o.dsn)
        try:
            pg_version = str(await admin.fetchval("SHOW server_version"))
            metrics: dict[str, float] = {}
            details: dict[str, Any] = {}

            await _truncate(admin)
            metrics["enqueue_single_jobs_per_s"] = await _enqueue_single(queries, o.jobs)
            await _truncate(admin)
            metrics["enqueue_batch_jobs_per_s"] = await _enqueue_batch(
                queries, o.jobs, o.batch_size
            )
            rate, rss, seconds = await _drain(admin, o)
            metrics["drain_jobs_per_s"] = rate
            details["drain_seconds"] = seconds
            await _truncate(admin)
            latencies = await _latency(queries, admin, o)
            metrics.update(bench.latency_metrics(latencies))
            metrics["worker_peak_rss_mb"] = rss
            details["latency_samples"] = len(latencies)
            details["latency_max_ms"] = max(latencies)
            details["worker"] = (
                f"pgqueuer.run(max_concurrent_tasks={o.concurrency}, "
                f"batch_size={_batch_size(o.concurrency)}), one asyncpg connection, "
                "uvloop when installed"
            )
            await _truncate(admin)
        finally:
            await admin.close()
    finally:
        await conn.close()
    settings = bench.base_settings(
        o, postgres_version=pg_version, system=peer_name(), peer=peer_name()
    )
    return bench.BenchResult(metrics, settings, details)


async def _truncate(conn: asyncpg.Connection) -> None:
    await conn.execute("TRUNCATE pgqueuer, pgqueuer_log, pgqueuer_statistics")


async def _queued(conn: asyncpg.Connection) -> int:
    return int(await conn.fetchval("SELECT count(*) FROM pgqueuer"))


def _payload(value: dict[str, Any]) -> bytes:
    return json.dumps(value, separators=(",", ":")).encode()


async def _enqueue_single(queries: Queries, n: int) -> float:
    from async_jobs import bench

    bench.progress(f"pgqueuer enqueue: {n} jobs, one call each")
    start = time.perf_counter()
    for i in range(n):
        await queries.enqueue("noop", _payload({"i": i}))
    return n / (time.perf_counter() - start)


async def _enqueue_batch(queries: Queries, n: int, batch_size: int) -> float:
    from async_jobs import bench

    bench.progress(f"pgqueuer enqueue: {n} jobs in batches of {batch_size}")
    start = time.perf_counter()
    for first in range(0, n, batch_size):
        size = min(batch_size, n - first)
        await queries.enqueue(
            ["noop"] * size,
            [_payload({"i": i}) for i in range(first, first + size)],
            [0] * size,
        )
    return n / (time.perf_counter() - start)


def _batch_size(concurrency: int) -> int:
    """The largest dequeue batch PgQueuer accepts under ``max_concurrent_tasks``."""
    return max(1, concurrency // 2)


def _worker_argv(concurrency: int) -> list[str]:
    return [sys.executable, str(Path(__file__).resolve()), "worker", str(concurrency)]


def _worker_env(o: BenchOptions) -> dict[str, str]:
    env = dict(os.environ)
    env[DSN_ENV] = o.dsn
    return env


async def _drain(conn: asyncpg.Connection, o: BenchOptions) -> tuple[float, float, float]:
    from async_jobs import bench

    queued = await _queued(conn)
    if queued != o.jobs:
        raise bench.BenchError(f"expected {o.jobs} queued jobs before the drain, found {queued}")
    await conn.execute("ANALYZE pgqueuer")  # same for both queues: fresh planner statistics
    bench.progress(
        f"pgqueuer drain: {o.jobs} jobs, one worker process, concurrency {o.concurrency}"
    )
    async with bench.worker_process(
        "pgqueuer worker", _worker_argv(o.concurrency), env=_worker_env(o), ready=READY
    ) as worker:
        started = await worker.wait_ready()
        finished = await bench.wait_until_zero(
            lambda: _queued(conn),
            total=o.jobs,
            since=started,
            timeout=bench.drain_timeout(o.jobs),
            worker=worker,
        )
        rss = worker.peak_rss_mb()
    succeeded = int(
        await conn.fetchval("SELECT count(*) FROM pgqueuer_log WHERE status = 'successful'")
    )
    if succeeded != o.jobs:
        raise bench.BenchError(f"the drain logged {succeeded} of {o.jobs} jobs as successful")
    seconds = finished - started
    return o.jobs / seconds, rss, seconds


async def _latency(queries: Queries, conn: asyncpg.Connection, o: BenchOptions) -> list[float]:
    from async_jobs import bench

    bench.progress(
        f"pgqueuer latency: {o.latency_jobs} jobs {o.latency_interval_ms:g} ms apart, idle "
        f"worker of concurrency {o.latency_concurrency}"
    )

    async def enqueue_one(_: int) -> None:
        t0 = time.time()
        await queries.enqueue("noop_timed", _payload({"t0": t0}))

    async with bench.worker_process(
        "pgqueuer worker",
        _worker_argv(o.latency_concurrency),
        env=_worker_env(o),
        ready=READY,
    ) as worker:
        await worker.wait_ready()
        await bench.idle(worker)
        started = time.perf_counter()
        await bench.paced(o.latency_jobs, o.latency_interval_ms / 1000, enqueue_one)
        await bench.wait_until_zero(
            lambda: _queued(conn), total=o.latency_jobs, since=started, timeout=60.0, worker=worker
        )
        await worker.wait_lines(o.latency_jobs, timeout=10.0)
        lines = list(worker.lines)
    latencies = []
    for line in lines:
        tag, _, rest = line.partition(" ")
        if tag != STARTED_TAG:
            continue
        payload, _, started_at = rest.rpartition(" ")
        latencies.append((float(started_at) - float(json.loads(payload)["t0"])) * 1000)
    if len(latencies) != o.latency_jobs:
        raise bench.BenchError(f"{len(latencies)} of {o.latency_jobs} latency jobs started")
    return latencies


# -- the worker process: ``python bench/pgqueuer_peer.py worker C`` ---------------------------


class _ReadyQueueManager(QueueManager):
    """PgQueuer's queue manager, printing a ready line once it has checked its schema (just
    before it starts listening and dequeuing)."""

    async def verify_structure(self) -> None:
        await super().verify_structure()
        print(READY, flush=True)


async def noop(job: Job) -> None:
    """Does nothing."""


async def noop_timed(job: Job) -> None:
    """Does nothing but print when it started, with the payload (which holds the enqueue
    time)."""
    started = time.time()
    print(STARTED_TAG, (job.payload or b"{}").decode(), repr(started), flush=True)


@contextlib.asynccontextmanager
async def create_worker() -> AsyncIterator[QueueManager]:
    """The factory ``pgqueuer.run`` (and ``pgq run``) calls: a queue manager on one asyncpg
    connection, as in PgQueuer's documentation."""
    conn = await asyncpg.connect(os.environ[DSN_ENV])
    manager = _ReadyQueueManager(Queries(AsyncpgDriver(conn)))
    manager.entrypoint("noop")(noop)
    manager.entrypoint("noop_timed")(noop_timed)
    try:
        yield manager
    finally:
        await conn.close()


def worker_main(concurrency: int) -> int:
    """What ``pgq run pgqueuer_peer:create_worker --max-concurrent-tasks C --batch-size C/2``
    does (that command fails in PgQueuer 1.6 with this Typer: its --log-level parser hands
    a str where a LogLevel is expected): ``pgqueuer.run`` on uvloop when it is installed,
    as the CLI does, with SIGTERM and SIGINT stopping it."""
    import asyncio
    from datetime import timedelta

    from pgqueuer import run

    worker = run(
        create_worker,
        batch_size=_batch_size(concurrency),
        max_concurrent_tasks=concurrency,
        dequeue_timeout=timedelta(seconds=30),
    )
    try:
        import uvloop
    except ImportError:
        asyncio.run(worker)
    else:
        uvloop.run(worker)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
