"""The drain with ``async-jobs worker --processes N``: one command, N worker processes.

    python bench/processes.py                          # N = 1 and 2, 3 interleaved rounds
    python bench/processes.py --processes 1,2,4 --jobs 20000 --concurrency 50

Each round enqueues ``--jobs`` no-op jobs in batches, then times one ``async-jobs worker
--processes N --concurrency C`` (C per process) from its first ready line to the moment the
table shows every job ended, exactly as ``async-jobs bench`` times its drain; the order of
the N values alternates between rounds. Prints the medians, the ratios to the first N, and
the workers' peak RSS (largest single process). Uses its own database (dropped and created).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import statistics
import sys
import time

import asyncpg
import psutil

from async_jobs.app import EnqueueRequest, JobApp
from async_jobs.bench import (
    HANDLERS_MODULE,
    READY_PREFIX,
    check_all_succeeded,
    drain_timeout,
    prepare_database,
    wait_until_zero,
    worker_process,
)
from async_jobs.bench.scale import unfinished
from async_jobs.core.settings import Settings

DSN = "postgresql://postgres@127.0.0.1:5432/async_jobs_processes_bench"


async def drain_once(dsn: str, processes: int, jobs: int, concurrency: int) -> tuple[float, float]:
    """(jobs/s, peak RSS MB of the largest worker process) of one drain."""
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute("TRUNCATE async_jobs CASCADE")
        async with JobApp(settings=Settings(db_dsn=dsn), handler_modules=[HANDLERS_MODULE]) as app:
            for first in range(0, jobs, 1000):
                last = min(first + 1000, jobs)
                batch = [EnqueueRequest("noop", {"i": i}) for i in range(first, last)]
                await app.enqueue_many(batch)
        await conn.execute("ANALYZE async_jobs")
        argv = [sys.executable, "-m", "async_jobs", "--log-level", "WARNING", "worker"]
        argv += ["--handlers", HANDLERS_MODULE, "--concurrency", str(concurrency)]
        argv += ["--processes", str(processes)]
        env = {k: v for k, v in os.environ.items() if not k.startswith("ASYNC_JOBS_")}
        env["ASYNC_JOBS_DB_DSN"] = dsn
        async with worker_process(
            f"worker --processes {processes}", argv, env=env, ready=READY_PREFIX
        ) as worker:
            started = await worker.wait_ready()
            await worker.wait_lines(processes - 1, timeout=60)  # the other ready lines
            children = psutil.Process(worker.pid).children() or [psutil.Process(worker.pid)]

            async def remaining() -> int:
                return await unfinished(conn)

            finished = await wait_until_zero(
                remaining, total=jobs, since=started, timeout=drain_timeout(jobs), worker=worker
            )
            rss = max(_peak_rss_mb(p.pid) for p in children)
        await check_all_succeeded(conn, jobs)
        return jobs / (finished - started), rss
    finally:
        await conn.close()


def _peak_rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status", encoding="ascii") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return 0.0


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--processes", default="1,2", help="comma-separated N values")
    parser.add_argument("--jobs", type=int, default=10_000)
    parser.add_argument("--concurrency", type=int, default=50, help="per process")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--dsn", default=DSN)
    args = parser.parse_args()
    counts = [int(n) for n in args.processes.split(",")]
    await prepare_database(args.dsn, recreate=True)
    async with JobApp(settings=Settings(db_dsn=args.dsn)) as app:
        await app.migrate()
    rates: dict[int, list[float]] = {n: [] for n in counts}
    rss: dict[int, list[float]] = {n: [] for n in counts}
    for round_ in range(args.rounds):
        for n in counts if round_ % 2 == 0 else list(reversed(counts)):
            t0 = time.perf_counter()
            rate, peak = await drain_once(args.dsn, n, args.jobs, args.concurrency)
            rates[n].append(rate)
            rss[n].append(peak)
            print(
                f"round {round_ + 1}, --processes {n}: {rate:,.0f} jobs/s, "
                f"worker RSS {peak:.0f} MB ({time.perf_counter() - t0:.1f} s in all)",
                flush=True,
            )
    print(
        f"\n{args.jobs:,} no-op jobs, --concurrency {args.concurrency} per process, medians of "
        f"{args.rounds} rounds; Python {platform.python_version()}, {os.cpu_count()} CPUs\n"
    )
    print("| processes | drain jobs/s | vs first | worker peak RSS (each) |")
    print("|---|---|---|---|")
    base = statistics.median(rates[counts[0]])
    for n in counts:
        median = statistics.median(rates[n])
        print(
            f"| {n} | {median:,.0f} | {median / base:.2f}x | {statistics.median(rss[n]):.0f} MB |"
        )


if __name__ == "__main__":
    asyncio.run(main())
