"""Churn soak (not in CI): jobs in and out at a steady rate with retention on, for a while;
every sample (a minute by default) the table's and its indexes' sizes, its dead tuples, the
rate jobs finished at and the enqueue-to-start p99. Writes ``bench/results/soak-<rate>.json``
and a plot ``soak-<rate>.png``.

    .venv/bin/python bench/soak.py --rate 1000 --minutes 30

One worker process (``async-jobs worker``) and one scheduler process (reaper, retention)
run against a database of their own; this process enqueues in batches ten times a second.
Retention keeps succeeded jobs ``--retain-minutes`` (the scheduler applies it once a
minute), so a flat table is what a steady state looks like once it has filled up. The five
minutes after the fill-up are the baseline: each later sample is reported as a ratio to
their mean.

With ``--history`` (and ``--backlog``, ``--tenants``, as ``async-jobs bench`` has them) the
load runs beside that many finished jobs: the database is seeded once and kept for later
runs, not recreated. The seeded jobs finished over the last week, so give a retention
longer than that (``--retain-minutes 20160``) unless retention deleting them is the point:

    .venv/bin/python bench/soak.py --rate 1000 --minutes 10 --history 10000000 \
        --backlog 1000000 --tenants 10000 --retain-minutes 20160 --sample-seconds 30
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import asyncpg

from async_jobs import bench
from async_jobs.app import EnqueueRequest, JobApp
from async_jobs.bench.scale import Shape, add_shape_options, shape_table, table_sizes
from async_jobs.core.settings import Settings

RESULTS = Path(__file__).parent / "results"
DSN = "postgresql://postgres@127.0.0.1:5432/soak_bench"
SCHEDULER_READY = "async-jobs scheduler ready"
TICK_SECONDS = 0.1
BASELINE_SECONDS = 300

# Jobs that finished, and the enqueue-to-start p99 of jobs that started, since $1, among
# those created in the 10 minutes before (a job waits far less). A job's id tells its
# created_at (0018), so the id bound keeps the read on the primary key's newest range
# instead of every row: beside ten million finished jobs, a scan of them all every sample.
WINDOW_SQL = """
SELECT count(*) FILTER (WHERE finished_at >= $1) AS finished,
       count(*) FILTER (WHERE started_at >= $1) AS started,
       percentile_cont(0.99) WITHIN GROUP (ORDER BY extract(epoch FROM started_at - created_at))
           FILTER (WHERE started_at >= $1) * 1000 AS p99_ms,
       now() AS at
FROM async_jobs
WHERE created_at > $1 - interval '10 minutes'
  AND id >= async_jobs_id_floor($1 - interval '10 minutes')
"""
PENDING_SQL = "SELECT count(*) FROM async_jobs WHERE status = 'pending'"


def environment(dsn: str, retain_minutes: float) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ASYNC_JOBS_")}
    env.update(
        ASYNC_JOBS_DB_DSN=dsn,
        ASYNC_JOBS_DEFAULT_MAX_CONCURRENT="100000",
        ASYNC_JOBS_RETAIN_SUCCEEDED_HOURS=str(retain_minutes / 60),
    )
    return env


async def produce(app: JobApp, rate: float, stop: asyncio.Event, sent: list[int]) -> None:
    """Enqueue ``rate`` jobs a second, in one batch per tick, on a fixed schedule."""
    loop = asyncio.get_running_loop()
    start = loop.time()
    tick = 0
    while not stop.is_set():
        due = int(rate * TICK_SECONDS * (tick + 1)) - int(rate * TICK_SECONDS * tick)
        if due:
            await app.enqueue_many([EnqueueRequest("noop", {"i": sent[0] + i}) for i in range(due)])
            sent[0] += due
        tick += 1
        delay = start + tick * TICK_SECONDS - loop.time()
        if delay > 0:
            await asyncio.sleep(delay)  # wait-ok: the producer's fixed schedule


async def sample(conn: asyncpg.Connection, since: Any, elapsed: float, sent: int) -> dict[str, Any]:
    window = await conn.fetchrow(WINDOW_SQL, since)
    sizes = await table_sizes(conn)
    relations = sizes.pop("relations_mb")
    return {
        "minute": round(elapsed / 60, 2),
        "at": window["at"],
        "enqueued_total": sent,
        "finished": window["finished"],
        "p99_ms": window["p99_ms"],
        "pending": await conn.fetchval(PENDING_SQL),
        "table_mb": relations.get("async_jobs", 0.0),
        "indexes_mb": round(sum(v for k, v in relations.items() if k != "async_jobs"), 2),
        "relations_mb": relations,
        **sizes,
    }


async def soak(args: argparse.Namespace) -> dict[str, Any]:
    shape = Shape(args.history, args.backlog, args.tenants)
    await bench.prepare_database(args.dsn, recreate=shape.empty)
    env = environment(args.dsn, args.retain_minutes)
    app = JobApp(settings=Settings(db_dsn=args.dsn), handler_modules=[bench.HANDLERS_MODULE])
    conn = await asyncpg.connect(args.dsn)
    samples: list[dict[str, Any]] = []
    worker_argv = [sys.executable, "-m", "async_jobs", "--log-level", "WARNING", "worker"]
    worker_argv += ["--handlers", bench.HANDLERS_MODULE, "--concurrency", str(args.concurrency)]
    scheduler_argv = [sys.executable, "-m", "async_jobs", "--log-level", "WARNING", "scheduler"]
    async with app:
        await app.migrate()
        if not shape.empty:
            await shape_table(conn, shape, bench.progress)
        async with (
            bench.worker_process("worker", worker_argv, env=env, ready=bench.READY_PREFIX) as w,
            bench.worker_process("scheduler", scheduler_argv, env=env, ready=SCHEDULER_READY) as s,
        ):
            await w.wait_ready()
            await s.wait_ready()
            stop = asyncio.Event()
            sent = [0]
            producer = asyncio.create_task(produce(app, args.rate, stop, sent))
            started = time.perf_counter()
            since = await conn.fetchval("SELECT now()")
            try:
                while time.perf_counter() - started < args.minutes * 60:
                    await asyncio.sleep(args.sample_seconds)  # wait-ok: the sampling period
                    w.check_alive()
                    s.check_alive()
                    if producer.done():
                        producer.result()
                    row = await sample(conn, since, time.perf_counter() - started, sent[0])
                    row["drain_jobs_per_s"] = row["finished"] / (row["at"] - since).total_seconds()
                    since = row["at"]
                    samples.append(row)
                    bench.progress(
                        f"{row['minute']:6.1f} min: drained {row['drain_jobs_per_s']:7.1f}/s, "
                        f"p99 {row['p99_ms'] or 0:7.1f} ms, pending {row['pending']:>7}, table "
                        f"{row['table_mb']:.1f} MiB, indexes {row['indexes_mb']:.1f} MiB, "
                        f"dead {row['n_dead_tup']}"
                    )
            finally:
                stop.set()
                await producer
    await conn.close()
    return {"settings": vars(args), "samples": samples, "flatness": flatness(samples, args)}


SERIES = ("table_mb", "indexes_mb", "n_dead_tup", "drain_jobs_per_s", "p99_ms")


def flatness(samples: list[dict[str, Any]], args: argparse.Namespace) -> dict[str, Any]:
    """Each series' later samples against their mean over the five minutes after the fill-up
    (the table grows until retention starts deleting: the retention time plus its minute);
    with a retention longer than the run, over the first five minutes."""
    start = (args.retain_minutes + 1) * 60 if args.retain_minutes + 1 < args.minutes else 0.0
    end = start + BASELINE_SECONDS + args.sample_seconds / 2
    first = [s for s in samples if start < s["minute"] * 60 <= end]
    later = [s for s in samples if s["minute"] * 60 > end]
    out: dict[str, Any] = {}
    for key in SERIES:
        base = statistics.mean(float(s[key] or 0) for s in first) if first else 0.0
        ratios = [float(s[key] or 0) / base for s in later] if base else []
        out[key] = {
            "baseline": base,
            "min_ratio": min(ratios, default=None),
            "max_ratio": max(ratios, default=None),
        }
    return out


def plot(report: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    samples = report["samples"]
    minutes = [s["minute"] for s in samples]
    fig, axes = plt.subplots(2, 2, figsize=(11, 7), sharex=True)
    ax = axes[0][0]
    ax.plot(minutes, [s["table_mb"] for s in samples], label="table")
    ax.plot(minutes, [s["indexes_mb"] for s in samples], label="indexes")
    ax.set_ylabel("MiB")
    ax.set_title("size")
    ax.legend()
    ax = axes[0][1]
    ax.plot(minutes, [s["n_dead_tup"] for s in samples], label="dead")
    ax.plot(minutes, [s["n_live_tup"] for s in samples], label="live")
    ax.set_title("tuples (pg_stat_user_tables)")
    ax.legend()
    ax = axes[1][0]
    ax.plot(minutes, [s["drain_jobs_per_s"] for s in samples])
    ax.axhline(report["settings"]["rate"], linestyle=":", color="grey")
    ax.set_ylabel("jobs/s")
    ax.set_title("finished per second (dotted: enqueue rate)")
    ax = axes[1][1]
    ax.plot(minutes, [s["p99_ms"] or 0 for s in samples])
    ax.set_ylabel("ms")
    ax.set_title("enqueue-to-start p99")
    for a in axes[1]:
        a.set_xlabel("minutes")
    for row in axes:
        for a in row:
            a.set_ylim(bottom=0)
    # Headroom above the enqueue rate: a drain that keeps up lies on it, not on the frame.
    top = max([report["settings"]["rate"], *(s["drain_jobs_per_s"] or 0 for s in samples)])
    axes[1][0].set_ylim(0, top * 1.15)
    fig.suptitle(textwrap.fill(report["title"], 120), fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=90)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--dsn", default=DSN, help="a local database named *bench* (recreated unless seeded)"
    )
    parser.add_argument("--rate", type=float, default=1000.0, help="jobs enqueued per second")
    parser.add_argument("--minutes", type=float, default=30.0)
    parser.add_argument("--sample-seconds", type=float, default=60.0)
    parser.add_argument("--concurrency", type=int, default=50)
    parser.add_argument("--retain-minutes", type=float, default=2.0)
    parser.add_argument("--note", default="", help="said in the plot's title (the machine)")
    parser.add_argument("--tag", default="", help="added to the results' file names")
    add_shape_options(parser)
    args = parser.parse_args()
    report = asyncio.run(soak(args))
    seeded = not Shape(args.history, args.backlog, args.tenants).empty
    report["title"] = (
        f"soak: {args.rate:g} jobs/s for {args.minutes:g} min, retention "
        f"{args.retain_minutes:g} min, concurrency {args.concurrency}"
        + (
            f", beside {args.history:,} finished and {args.backlog:,} waiting jobs"
            if seeded
            else ""
        )
        + f". {args.note}"
    ).strip()
    RESULTS.mkdir(exist_ok=True)
    name = f"soak-{args.rate:g}"
    if seeded:
        name += f"-{args.history}-{args.backlog}-{args.tenants}"
    if args.tag:
        name += f"-{args.tag}"
    (RESULTS / f"{name}.json").write_text(
        json.dumps(report, indent=2, default=str) + "\n", encoding="utf-8"
    )
    plot(report, RESULTS / f"{name}.png")
    print(json.dumps(report["flatness"], indent=2))
    print(f"wrote {RESULTS / name}.json and .png")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
