"""How long one dispatch round (the claim, with every limit) takes over a deep backlog.

    python bench/scheduler_tick.py                     # 100,000 pending jobs in 10 tenants
    python bench/scheduler_tick.py --jobs 1000000 --tenants 100 --explain

A fresh database is filled with due pending jobs spread over the tenants, analysed, then
claimed ``--rounds`` times ``--limit`` jobs at a time through ``PostgresStore.claim_jobs``
(quotas on: every tenant has a max_running and a rate, so every branch of the claim runs).
Prints the round times (median, p95, max) and, with ``--explain``, the plan of one claim's
main statement, which shows the index walks it relies on.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import platform
import statistics
import time

import asyncpg

from async_jobs.domain.jobs import ClaimRequest
from async_jobs.domain.scheduling import Limits, TenantQuota
from async_jobs.stores.postgres import PostgresStore

ADMIN = "postgresql://postgres@127.0.0.1:5432/postgres"
DSN = "postgresql://postgres@127.0.0.1:5432/async_jobs_tick_bench"


async def main(args: argparse.Namespace) -> None:
    admin = await asyncpg.connect(ADMIN)
    await admin.execute("DROP DATABASE IF EXISTS async_jobs_tick_bench WITH (FORCE)")
    await admin.execute("CREATE DATABASE async_jobs_tick_bench")
    await admin.close()
    store = PostgresStore(DSN)
    await store.open()
    await store.migrate()
    conn = await asyncpg.connect(DSN)
    started = time.perf_counter()
    await conn.execute(
        """INSERT INTO async_jobs (id, tenant_id, use_case, type, priority, max_attempts, run_at,
                                  delay_tolerance_seconds, deadline_at)
           SELECT gen_random_uuid(), 'tenant-' || (i % $2), 'default', 'noop',
                  (ARRAY['critical', 'high', 'medium', 'low'])[1 + i % 4]::async_jobs_priority,
                  3, now() - make_interval(secs => i % 3600), 300,
                  now() - make_interval(secs => i % 3600) + interval '300 seconds'
           FROM generate_series(1, $1) AS i""",
        args.jobs,
        args.tenants,
    )
    await conn.execute("VACUUM ANALYZE async_jobs")
    filled = time.perf_counter() - started
    quotas = {
        f"tenant-{t}": {"default": TenantQuota(max_running=10_000, max_per_second=10_000)}
        for t in range(args.tenants)
    }
    limits = Limits(default_max_concurrent=1_000_000, quotas=quotas)
    request = ClaimRequest("bench", args.limit, 300, limits=limits)
    times = []
    for _ in range(args.rounds):
        begin = time.perf_counter()
        claimed = await store.claim_jobs(request)
        times.append((time.perf_counter() - begin) * 1000)
        assert len(claimed) == args.limit
    ordered = sorted(times)
    report = {
        "machine": f"{platform.machine()}, {platform.processor() or '?'}, Python "
        f"{platform.python_version()}, PostgreSQL {await conn.fetchval('SHOW server_version')}",
        "pending_jobs": args.jobs,
        "tenants": args.tenants,
        "claim_limit": args.limit,
        "rounds": args.rounds,
        "fill_seconds": round(filled, 1),
        "round_ms_median": round(statistics.median(times), 2),
        "round_ms_p95": round(ordered[int(0.95 * (len(ordered) - 1))], 2),
        "round_ms_max": round(ordered[-1], 2),
    }
    print(json.dumps(report, indent=2))
    if args.explain:
        await conn.execute("LOAD 'auto_explain'")
        await conn.execute("SET auto_explain.log_min_duration = 0")
        await conn.execute("SET auto_explain.log_nested_statements = on")
        await conn.execute("SET auto_explain.log_analyze = on")
        await conn.execute("SET client_min_messages = log")
        plans: list[str] = []
        conn.add_log_listener(lambda _c, message: plans.append(message.message))
        quota_rows = limits.quota_rows()
        await conn.fetch(
            "SELECT * FROM async_jobs_claim($1, '{}', '{}', 'bench', 300, $2, '{}', '{}',"
            " $3, $4, $5, $6)",
            args.limit,
            limits.default_max_concurrent,
            [q[0] for q in quota_rows],
            [q[1] for q in quota_rows],
            [q[2] for q in quota_rows],
            [q[3] for q in quota_rows],
        )
        print(max((p for p in plans if "CTE claimed" in p), key=len, default="no plan logged"))
    await conn.close()
    await store.close()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=100_000)
    parser.add_argument("--tenants", type=int, default=10)
    parser.add_argument("--limit", type=int, default=50, help="jobs per claim")
    parser.add_argument("--rounds", type=int, default=50)
    parser.add_argument("--explain", action="store_true")
    asyncio.run(main(parser.parse_args()))
