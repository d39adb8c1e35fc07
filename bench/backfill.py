"""0015's backfill on a big table, while the queue works: ``CALL async_jobs_mark_delayed``
over ``--rows`` pending jobs of the future written unmarked (as a table migrated from 0014
holds them), stopped part-way and called again, with an enqueue-and-claim loop running
beside it the whole time.

    .venv/bin/python bench/backfill.py --rows 1000000

Checks: the first call, cancelled after ``--stop-after`` seconds, kept every batch it had
committed; the second call marks exactly the rest; the loop beside it was never blocked
longer than one batch. Prints the loop's latency before and during the backfill and the
backfill's rate. The database (``backfill_bench`` by default) is recreated.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import statistics
import time
from pathlib import Path
from typing import Any

import asyncpg

from async_jobs import JobApp
from async_jobs.bench.harness import prepare_database
from async_jobs.domain.jobs import ClaimRequest

DSN = "postgresql://postgres@127.0.0.1:5432/backfill_bench"
SEED = """
INSERT INTO async_jobs (id, tenant_id, use_case, type, max_attempts, run_at,
                        delay_tolerance_seconds, deadline_at)
SELECT gen_random_uuid(), 't' || (g % $2), 'later', 'noop', 3,
       now() + interval '1 day', 0, now() + interval '1 day'
FROM generate_series(1, $1) AS g
"""


async def beside(app: JobApp, stop: asyncio.Event, spans: list[tuple[float, float]]) -> None:
    """Enqueue one job and claim it, over and over: (start, milliseconds) of each pair."""
    while not stop.is_set():
        start = time.perf_counter()
        await app.enqueue("noop", None, use_case="now")
        claimed = await app.store.claim_jobs(ClaimRequest("w", 10, 30.0, use_cases=("now",)))
        assert claimed, "the job just enqueued was not claimed"
        spans.append((start, (time.perf_counter() - start) * 1000))
        await asyncio.sleep(0.005)  # a steady trickle, not a flood


def summary(spans: list[float]) -> dict[str, float]:
    ordered = sorted(spans)
    return {
        "pairs": len(ordered),
        "p50_ms": statistics.median(ordered),
        "p99_ms": ordered[int(len(ordered) * 0.99)],
        "max_ms": ordered[-1],
    }


async def main(args: argparse.Namespace) -> dict[str, Any]:
    await prepare_database(args.dsn, recreate=True)  # local, named *bench*, or refused
    app = JobApp(args.dsn, strict_types=False)
    await app.open()
    await app.migrate()
    conn = await asyncpg.connect(args.dsn)
    started = time.perf_counter()
    await conn.execute(SEED, args.rows, args.tenants)
    await conn.execute("VACUUM (ANALYZE) async_jobs")
    print(f"[backfill] seeded {args.rows:,} unmarked future jobs in "
          f"{time.perf_counter() - started:.1f} s")  # fmt: skip

    stop = asyncio.Event()
    spans: list[tuple[float, float]] = []
    loop = asyncio.create_task(beside(app, stop, spans))
    await asyncio.sleep(args.baseline_seconds)  # the loop's latency before the backfill
    backfill_from = time.perf_counter()

    first = await asyncpg.connect(args.dsn)
    first_pid = await first.fetchval("SELECT pg_backend_pid()")
    call = asyncio.create_task(first.execute(f"CALL async_jobs_mark_delayed({args.batch})"))
    done, _ = await asyncio.wait([call], timeout=args.stop_after)
    stopped = not done
    if stopped:  # stopped part-way, as an operator's Ctrl-C or a lost connection would
        await conn.execute("SELECT pg_cancel_backend($1)", first_pid)
        with contextlib.suppress(asyncpg.QueryCanceledError):
            await call
    await first.close()
    kept = await conn.fetchval("SELECT count(*) FROM async_jobs WHERE delayed")

    second_from = time.perf_counter()
    await conn.execute(f"CALL async_jobs_mark_delayed({args.batch})")
    finished = time.perf_counter()
    marked = await conn.fetchval("SELECT count(*) FROM async_jobs WHERE delayed")
    stop.set()
    await loop
    await conn.close()
    await app.close()

    before = [ms for at, ms in spans if at < backfill_from]
    during = [ms for at, ms in spans if backfill_from <= at < finished]
    result = {
        "rows": args.rows,
        "batch": args.batch,
        "stopped_part_way": stopped,
        "marked_by_first_call": kept,
        "marked_in_all": marked,
        "second_call_seconds": finished - second_from,
        "backfill_seconds": finished - backfill_from,
        "rows_per_second": args.rows / (finished - backfill_from),
        "loop_before": summary(before),
        "loop_during": summary(during),
    }
    if marked != args.rows:
        raise SystemExit(f"marked {marked:,} of {args.rows:,} rows")
    return result


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dsn", default=DSN)
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--tenants", type=int, default=1_000)
    parser.add_argument("--batch", type=int, default=10_000)
    parser.add_argument("--stop-after", type=float, default=5.0)
    parser.add_argument("--baseline-seconds", type=float, default=10.0)
    parser.add_argument("--json", type=Path)
    arguments = parser.parse_args()
    outcome = asyncio.run(main(arguments))
    print(json.dumps(outcome, indent=1))
    if arguments.json is not None:
        arguments.json.write_text(json.dumps(outcome, indent=1), encoding="utf-8")
