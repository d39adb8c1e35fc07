"""What an enqueue costs against the floor the database sets: alternating rounds on one local
database, no worker running.

    .venv/bin/python bench/enqueue_floor.py --rounds 5

One job per call:
- ``floor``: a prepared ``INSERT`` of a two-column row (uuid, jsonb) with its own commit,
  on asyncpg, one round trip: what any queue that commits each enqueue pays at least;
- ``ours``: ``JobApp.enqueue``;
- ``insert_job``: our single insert statement alone, as ``JobApp.enqueue`` sends it, its
  parameters made beforehand: the difference from ``ours`` is this library's own work per
  call (validating, the returned ``Job``, metrics), the difference from ``floor`` the
  statement's.

Batches of 1,000:
- ``enqueue_many``: the whole call's time, this process's CPU and PostgreSQL's per job;
- ``statement``: our insert statement alone (as ``enqueue_many`` sends a batch of like
  jobs: ``insert_jobs_alike``), its parameters encoded beforehand;
- ``copy``: ``COPY`` of the same rows through the driver, which encodes every field of every
  row, for comparison (``enqueue_many`` writes the lists after its first statement by a
  ``COPY`` it encodes itself: README, Design notes, "Batch enqueue").

PostgreSQL's CPU is read from ``/proc`` for the backends of the benchmark's database, so
the server must run on this machine. Figures are medians over the rounds, per job.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import os
import statistics
import time
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import asyncpg

from async_jobs import EnqueueRequest, JobApp
from async_jobs.bench.broker import cpu_meter, database_of
from async_jobs.bench.harness import prepare_database
from async_jobs.domain.jobs import NewJob, new_job_id, time_of_id
from async_jobs.stores.postgres.inserts import _insert_values, _statement_params
from async_jobs.stores.postgres.queries import QUERIES

DSN = "postgresql://postgres@127.0.0.1:5432/enqueue_floor_bench"
BATCH = 1000
COPY_COLUMNS = [
    "id", "tenant_id", "use_case", "type", "payload", "priority", "max_attempts", "run_at",
    "delay_tolerance_seconds", "deadline_at",
]  # fmt: skip


def fresh(job: NewJob) -> NewJob:
    """The job again, with an id of its own (and that id's time)."""
    job_id = new_job_id()
    return dataclasses.replace(job, id=job_id, created_at=time_of_id(job_id))


async def measure(jobs: int, run: Callable[[], Awaitable[None]], dsn: str) -> dict[str, float]:
    """Run once; jobs/s and the µs of CPU per job of this process and of the database's
    backends (``bench.broker.cpu_meter``: shares of a core over the run's wall time)."""
    start = time.perf_counter()
    with cpu_meter({"client": [os.getpid()]}, database_of(dsn)) as shares:
        await run()
    wall = time.perf_counter() - start
    cpu = shares()
    return {
        "jobs_per_s": jobs / wall,
        "client_us": 1e6 * cpu["client"] * wall / jobs,
        "server_us": 1e6 * cpu["postgresql_db"] * wall / jobs,
    }


async def opened(dsn: str) -> tuple[JobApp, asyncpg.Connection]:
    """An app on the benchmark's database (created when missing, migrated) and a connection
    of the benchmark's own."""
    await prepare_database(dsn)
    app = JobApp(dsn, strict_types=False)
    await app.open()
    await app.migrate()
    return app, await asyncpg.connect(dsn)


async def loops(
    args: argparse.Namespace, app: JobApp, conn: asyncpg.Connection
) -> dict[str, Callable[[], Awaitable[None]]]:
    """The loops to time, by name (see the module docstring)."""
    await conn.execute("CREATE TABLE IF NOT EXISTS enqueue_floor (id uuid PRIMARY KEY, p jsonb)")
    insert_floor = await conn.prepare("INSERT INTO enqueue_floor VALUES ($1, '{}')")
    await app.enqueue("noop", None)  # opens the app's connections
    await app.enqueue_many([EnqueueRequest("noop") for _ in range(BATCH)])
    news = list(app._builder.built([EnqueueRequest("noop") for _ in range(BATCH)], []))

    async def floor() -> None:
        for _ in range(args.jobs):
            await insert_floor.fetch(uuid.uuid4())

    async def ours() -> None:
        for _ in range(args.jobs):
            await app.enqueue("noop", None)

    single_rows = [
        [(*_insert_values(job := fresh(news[0])), None, job.created_at) for _ in range(args.jobs)]
        for _ in range(args.rounds)
    ]

    async def insert_job() -> None:
        for row in single_rows.pop():
            await conn.fetchrow(QUERIES["insert_job"], *row)

    async def enqueue_many() -> None:
        for _ in range(args.jobs // BATCH):
            await app.enqueue_many([EnqueueRequest("noop") for _ in range(BATCH)])

    async def statement() -> None:
        for _ in range(args.jobs // BATCH):
            alike, params = _statement_params(news)
            params[0] = [uuid.uuid4() for _ in range(BATCH)]
            query = QUERIES["insert_jobs_alike" if alike else "insert_jobs"]
            async with conn.transaction():
                await conn.fetch(query, *params)

    async def copy() -> None:
        for _ in range(args.jobs // BATCH):
            async with conn.transaction():
                now = await conn.fetchval("SELECT now()")
                rows = [
                    (uuid.uuid4(), "default", "default", "noop", "{}", "medium", 3, now, 0.0, now)
                    for _ in range(BATCH)
                ]
                await conn.copy_records_to_table("async_jobs", records=rows, columns=COPY_COLUMNS)

    return {
        "floor": floor, "ours": ours, "insert_job": insert_job, "enqueue_many": enqueue_many,
        "statement": statement, "copy": copy,
    }  # fmt: skip


async def main(args: argparse.Namespace) -> dict[str, Any]:
    app, conn = await opened(args.dsn)
    scenarios = await loops(args, app, conn)
    found: dict[str, list[dict[str, float]]] = {name: [] for name in scenarios}
    for round_ in range(args.rounds):
        for name, run in scenarios.items():
            await conn.execute("TRUNCATE async_jobs CASCADE")
            await conn.execute("TRUNCATE enqueue_floor")
            found[name].append(await measure(args.jobs, run, args.dsn))
        print(f"round {round_ + 1}: " + ", ".join(
            f"{name} {found[name][-1]['jobs_per_s']:,.0f}/s" for name in scenarios
        ))  # fmt: skip
    await conn.close()
    await app.close()
    summary = {
        name: {key: statistics.median(r[key] for r in runs) for key in runs[0]}
        for name, runs in found.items()
    }
    return {"jobs": args.jobs, "rounds": args.rounds, "summary": summary, "runs": found}


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dsn", default=DSN)
    parser.add_argument("--jobs", type=int, default=3000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--json", type=Path, help="write the figures here")
    result = asyncio.run(main(parser.parse_args()))
    for name, figures in result["summary"].items():
        print(
            f"{name:13s} {figures['jobs_per_s']:9,.0f} jobs/s   client {figures['client_us']:6.1f}"
            f" µs/job   server {figures['server_us']:6.1f} µs/job"
        )
    floor, ours = result["summary"]["floor"], result["summary"]["ours"]
    print(f"ours / floor, one job per call: {ours['jobs_per_s'] / floor['jobs_per_s']:.2f}")
    if (out := parser.parse_args().json) is not None:
        out.write_text(json.dumps(result, indent=1), encoding="utf-8")
