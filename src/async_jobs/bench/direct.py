"""``async-jobs bench`` (``--transport direct``, the default): the scenarios of this queue on
PostgreSQL, each from the table's shape (empty unless ``--history``/``--backlog``):

1. enqueue, one ``await app.enqueue(...)`` per job, N jobs one after the other;
2. enqueue, ``app.enqueue_many`` in batches (1,000 by default);
3. drain: the N jobs of (2) run by ONE worker process (``async-jobs worker``); the clock
   starts when the process prints its ready line and stops when the table shows all N
   terminal; the process's peak RSS (VmHWM) is read before it is stopped;
4. latency: an idle worker process of concurrency 10; jobs enqueued one at a time 20 ms
   apart; latency is from just before the enqueue call to the first line of the handler.

The drain and the latency scenario also serve ``--transport redis`` (its direct rounds, and
its latency with a scheduler beside the worker).
"""

from __future__ import annotations

import contextlib
import time
from typing import TYPE_CHECKING, Any

from async_jobs.bench.harness import (
    READY_PREFIX,
    BenchError,
    BenchOptions,
    BenchResult,
    base_settings,
    check_queued,
    enqueue_batch,
    idle,
    latency_metrics,
    opened,
    paced,
    prepared,
    progress,
    version,
    wait_drained,
    wait_until_zero,
    worker_argv,
    worker_env,
    worker_process,
)
from async_jobs.bench.scale import (
    Shape,
    clear_measured,
    latencies_ms,
    measured_counts,
    shape_table,
    table_sizes,
    unfinished,
)

if TYPE_CHECKING:
    import asyncpg

    from async_jobs.app import JobApp


async def bench_direct(o: BenchOptions) -> BenchResult:
    from async_jobs.core.settings import Settings

    shape = Shape(o.history, o.backlog, o.tenants)
    await prepared(o)
    async with opened(o, Settings(db_dsn=o.dsn)) as (conn, app, pg_version):
        metrics: dict[str, float] = {}
        details: dict[str, Any] = {"seed_seconds": await shape_table(conn, shape, progress)}
        details["sizes_before"] = await table_sizes(conn)

        metrics["enqueue_single_jobs_per_s"] = await _enqueue_single(app, o.jobs)
        await clear_measured(conn, shape)
        metrics["enqueue_batch_jobs_per_s"] = await enqueue_batch(app, o.jobs, o.batch_size)
        rate, rss, seconds = await drain(conn, o)
        metrics["drain_jobs_per_s"] = rate
        details["drain_seconds"] = seconds
        await clear_measured(conn, shape)
        idle_cpu: dict[str, float] = {}
        latencies = await latency(app, conn, o, cpu=idle_cpu)
        metrics.update(latency_metrics(latencies))
        metrics["latency_worker_cpu_us"] = idle_cpu["worker"]
        metrics["latency_postgresql_cpu_us"] = idle_cpu["postgresql"]
        metrics["worker_peak_rss_mb"] = rss
        details["latency_samples"] = len(latencies)
        details["latency_max_ms"] = max(latencies)
        details["sizes_after"] = await table_sizes(conn)
        await clear_measured(conn, shape)
    settings = base_settings(o, postgres_version=pg_version, system=f"async-jobs {version()}")
    settings.update(history=o.history, backlog=o.backlog, tenants=o.tenants)
    return BenchResult(metrics, settings, details)


async def _enqueue_single(app: JobApp, n: int) -> float:
    progress(f"enqueue: {n} jobs, one call each")
    start = time.perf_counter()
    for i in range(n):
        await app.enqueue("noop", {"i": i})
    return n / (time.perf_counter() - start)


async def drain(
    conn: asyncpg.Connection, o: BenchOptions, cpu: dict[str, float] | None = None
) -> tuple[float, float, float]:
    """The jobs of the batch enqueue, run by one worker process: (jobs/s, peak RSS MB, s).
    With ``cpu``, the CPU shares of the worker and PostgreSQL during the drain are put in it
    (``bench.broker.cpu_meter``)."""
    from async_jobs.bench.broker import cpu_meter, database_of

    await check_queued(conn, o.jobs)
    progress(f"drain: {o.jobs} jobs, one worker process, concurrency {o.concurrency}")
    async with worker_process(
        "async-jobs worker", worker_argv(o.concurrency), env=worker_env(o), ready=READY_PREFIX
    ) as worker:
        started = await worker.wait_ready()
        with cpu_meter({"worker": [worker.pid]}, database_of(o.dsn)) as shares:
            finished = await wait_drained(conn, o, started, worker)
        rss = worker.peak_rss_mb()
    if cpu is not None:
        cpu.update(shares())
    seconds = finished - started
    counts = await measured_counts(conn)
    if counts.get("succeeded", 0) != o.jobs:
        raise BenchError(f"the drain did not succeed on every job: {counts}")
    return o.jobs / seconds, rss, seconds


async def latency(
    app: JobApp,
    conn: asyncpg.Connection,
    o: BenchOptions,
    env: dict[str, str] | None = None,
    scheduler: list[str] | None = None,
    cpu: dict[str, float] | None = None,
) -> list[float]:
    """Enqueue-to-start latencies (ms) of jobs enqueued one at a time to an idle worker (and,
    for a broker transport, an idle scheduler, started by ``scheduler``, to dispatch them).
    With ``cpu``, the CPU the worker and the database's backends spent per job while the jobs
    came and ran (µs: ``worker``, ``postgresql``) is put in it: what a lightly loaded
    deployment pays per job, wake-ups and idle claims included."""
    from async_jobs.bench.broker import cpu_meter, database_of

    progress(
        f"latency: {o.latency_jobs} jobs {o.latency_interval_ms:g} ms apart, idle worker "
        f"of concurrency {o.latency_concurrency}{' and a scheduler' if scheduler else ''}"
    )

    async def enqueue_one(_: int) -> None:
        t0 = time.time()
        await app.enqueue("noop_timed", {"t0": t0})

    env = env or worker_env(o)
    async with contextlib.AsyncExitStack() as stack:
        worker = await stack.enter_async_context(
            worker_process(
                "async-jobs worker",
                worker_argv(o.latency_concurrency),
                env=env,
                ready=READY_PREFIX,
            )
        )
        await worker.wait_ready()
        if scheduler is not None:
            dispatching = await stack.enter_async_context(
                worker_process(
                    "async-jobs scheduler",
                    scheduler,
                    env=env,
                    ready="async-jobs scheduler ready",
                )
            )
            await dispatching.wait_ready()
        await idle(worker)
        started = time.perf_counter()
        with cpu_meter({"worker": [worker.pid]}, database_of(o.dsn)) as shares:
            await paced(o.latency_jobs, o.latency_interval_ms / 1000, enqueue_one)
            await wait_until_zero(
                lambda: unfinished(conn),
                total=o.latency_jobs,
                since=started,
                timeout=60.0,
                worker=worker,
            )
        wall = time.perf_counter() - started
    if cpu is not None:
        per_job, spent = 1e6 * wall / o.latency_jobs, shares()
        cpu["worker"] = spent["worker"] * per_job
        cpu["postgresql"] = spent["postgresql_db"] * per_job
    latencies = await latencies_ms(conn)
    if len(latencies) != o.latency_jobs:
        raise BenchError(f"{len(latencies)} of {o.latency_jobs} latency jobs succeeded")
    return latencies
