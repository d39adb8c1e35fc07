"""Every dashboard page's server time with a million jobs in PostgreSQL (reported, not
asserted; the target is under 200 ms a page).

    .venv/bin/python bench/dashboard.py [--jobs 1000000] [--rounds 5] [--keep] [--database NAME]

Makes a database of its own (``async_jobs_dashboard_bench`` unless named), fills it with one
INSERT ... SELECT (90% succeeded, 5% failed, 2% cancelled, 2% pending, 1% running; 4 use
cases, 20 tenants; 1% critical, 10% high, the rest medium; ended over the last two hours),
VACUUM ANALYZEs it, times the leader's rollup chore over the last hour (what a process that
starts leading does first, in four runs of 15 minutes) and one steady-state run (the last
70 s), then times each page in process (the app called through ASGI, no network): the median
and the worst of ``--rounds`` requests, after one warm-up request per page. The app declares
a quota for every tenant (and one per use case for four of them) and three periodic jobs, so
that the Tenants and Periodic pages have something to read. The two "bulk plan" rows are the
page that asks to confirm a bulk action (POSTed, it changes nothing). ``--drop`` drops the
database at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import html
import re
import statistics
import time

import asyncpg
import httpx

from async_jobs import JobApp, Settings
from async_jobs.api import create_api
from async_jobs.domain.scheduling import parse_quotas
from async_jobs.stores.postgres import PostgresStore

ADMIN = "postgresql://postgres@127.0.0.1:5432/postgres"
NAME = "async_jobs_dashboard_bench"
DSN = f"postgresql://postgres@127.0.0.1:5432/{NAME}"  # rebound by --database

FILL = """
INSERT INTO async_jobs (id, tenant_id, use_case, type, payload, priority, status, attempts,
    max_attempts,
    run_at, delay_tolerance_seconds, deadline_at, created_at, updated_at, started_at,
    finished_at, lease_token, lease_expires_at, worker_id, error)
SELECT gen_random_uuid(), 'tenant-' || (i % 20),
    (ARRAY['mail', 'sms', 'billing', 'reports'])[i % 4 + 1],
    'echo', jsonb_build_object('n', i),
    (CASE WHEN i % 100 = 3 THEN 'critical' WHEN i % 10 = 4 THEN 'high'
          ELSE 'medium' END)::async_jobs_priority,
    s.status::async_jobs_state,
    CASE WHEN s.status IN ('pending') THEN 0 ELSE 1 END, 3,
    t.at, 300, t.at + interval '300 seconds', t.at, t.at,
    CASE WHEN s.status IN ('pending', 'cancelled') THEN NULL ELSE t.at + interval '1 second' END,
    CASE WHEN s.status IN ('succeeded', 'failed', 'cancelled') THEN t.at + interval '2 seconds' END,
    CASE WHEN s.status = 'running' THEN gen_random_uuid() END,
    CASE WHEN s.status = 'running' THEN now() + interval '1 hour' END,
    CASE WHEN s.status = 'running' THEN 'bench-worker' END,
    CASE WHEN s.status = 'failed' THEN '{"type": "Boom", "message": "boom"}'::jsonb END
FROM generate_series(1, $1) AS i,
LATERAL (SELECT CASE WHEN i % 100 < 90 THEN 'succeeded' WHEN i % 100 < 95 THEN 'failed'
                     WHEN i % 100 < 97 THEN 'cancelled' WHEN i % 100 < 99 THEN 'pending'
                     ELSE 'running' END AS status) AS s,
LATERAL (SELECT now() - (i * (7200.0 / $1)) * interval '1 second' AS at) AS t
"""


async def make_database(jobs: int, keep: bool) -> None:
    admin = await asyncpg.connect(ADMIN)
    try:
        exists = await admin.fetchval("SELECT 1 FROM pg_database WHERE datname = $1", NAME)
        if exists and keep:
            return
        await admin.execute(f'DROP DATABASE IF EXISTS "{NAME}"')
        await admin.execute(f'CREATE DATABASE "{NAME}"')
    finally:
        await admin.close()
    app = JobApp(DSN)
    async with app:
        await app.migrate()
    conn = await asyncpg.connect(DSN)
    try:
        started = time.perf_counter()
        await conn.execute(FILL, jobs)
        await conn.execute("VACUUM ANALYZE async_jobs")
        print(f"filled {jobs:,} jobs in {time.perf_counter() - started:.1f} s", flush=True)
    finally:
        await conn.close()


async def roll_up() -> None:
    """The leader's rollup chore: the catch-up of a new leader, then one steady-state run."""
    store = PostgresStore(DSN)
    await store.open()
    try:
        started = time.perf_counter()
        rows = 0
        for back in (3600, 2700, 1800, 900):
            rows += await store.roll_up_finished(back, back - 900)
        caught_up = time.perf_counter() - started
        started = time.perf_counter()
        await store.roll_up_finished(70)
        steady = time.perf_counter() - started
        print(
            f"rollup: last hour in {caught_up * 1000:.0f} ms ({rows:,} rows), "
            f"a steady-state run (70 s) in {steady * 1000:.0f} ms",
            flush=True,
        )
    finally:
        await store.close()


QUOTA = {"max_pending": 1_000_000, "max_running": 50}
QUOTAS = {
    **{f"tenant-{n}": {"*": QUOTA} for n in range(20)},
    **{f"tenant-{n}": {"*": QUOTA, "mail": QUOTA} for n in range(4)},
}
PERIODIC = (("hourly", "0 * * * *"), ("nightly", "0 3 * * *"), ("often", "* * * * *"))


async def measure(rounds: int) -> None:
    settings = Settings(
        db_dsn=DSN,
        per_tenant_quotas=parse_quotas(QUOTAS, "bench"),
        periodic_jobs=tuple(
            {"name": name, "cron": cron, "type": "echo", "use_case": "reports"}
            for name, cron in PERIODIC
        ),
    )
    jobs = JobApp(DSN, settings=settings, handler_modules=["async_jobs.demo"])
    api = create_api(jobs)
    async with api.router.lifespan_context(api):
        transport = httpx.ASGITransport(app=api)
        async with httpx.AsyncClient(transport=transport, base_url="http://bench") as http:
            first = (await http.get("/jobs?limit=1&status=failed")).json()["items"][0]
            low = (await http.get("/dashboard/jobs?priority=low")).text
            older = re.search(r'id="search-older" href="/dashboard([^"]+)"', low)
            csrf = re.search(r'name="csrf" value="([^"]+)"', low)
            assert older and csrf, "the Jobs page has no Search older link or no form"
            plan = {"csrf": csrf[1], "action": "retry-all", "filter_state": "failed"}
            pages: dict[str, tuple[str, dict[str, str] | None]] = {
                "overview": ("/dashboard", None),
                "overview (live part)": ("/dashboard/live/overview", None),
                "jobs": ("/dashboard/jobs", None),
                "jobs (live rows)": ("/dashboard/live/jobs", None),
                "jobs, failed in billing": ("/dashboard/jobs?state=failed&use_case=billing", None),
                "jobs, one tenant": ("/dashboard/jobs?tenant=tenant-7", None),
                "jobs, critical (1%)": ("/dashboard/jobs?priority=critical", None),
                "jobs, high in one tenant": ("/dashboard/jobs?priority=high&tenant=tenant-4", None),
                "jobs, low (no job)": ("/dashboard/jobs?priority=low", None),
                "jobs, low, search older": (f"/dashboard{html.unescape(older[1])}", None),
                "jobs, a type no job has": ("/dashboard/jobs?type=nope", None),
                "jobs, failed in tenant-3 (none)": (
                    "/dashboard/jobs?state=failed&tenant=tenant-3",
                    None,
                ),
                "jobs, by id": (f"/dashboard/jobs?q={first['id']}", None),
                "job": (f"/dashboard/jobs/{first['id']}", None),
                "bulk plan: retry all failed": ("/dashboard/jobs/bulk", plan),
                "bulk plan: cancel all": (
                    "/dashboard/jobs/bulk",
                    {**plan, "action": "cancel-all", "filter_state": ""},
                ),
                "workers": ("/dashboard/workers", None),
                "periodic": ("/dashboard/periodic", None),
                "tenants": ("/dashboard/tenants", None),
            }
            print(f"{'page':32} {'median ms':>10} {'worst ms':>10}")
            for name, (path, form) in pages.items():
                times = []
                for _ in range(rounds + 1):  # the first is a warm-up
                    started = time.perf_counter()
                    answer = await (http.get(path) if form is None else http.post(path, data=form))
                    times.append((time.perf_counter() - started) * 1000)
                    assert answer.status_code == 200, (path, answer.status_code)
                times = times[1:]
                print(f"{name:32} {statistics.median(times):10.1f} {max(times):10.1f}", flush=True)


def main() -> None:
    global NAME, DSN
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=1_000_000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--keep", action="store_true", help="reuse the database if it exists")
    parser.add_argument("--database", default=None, help="the database to make and fill")
    parser.add_argument("--drop", action="store_true", help="drop the database at the end")
    args = parser.parse_args()
    if args.database:
        NAME, DSN = args.database, f"postgresql://postgres@127.0.0.1:5432/{args.database}"
    asyncio.run(make_database(args.jobs, args.keep))
    asyncio.run(roll_up())
    asyncio.run(measure(args.rounds))
    if args.drop:
        asyncio.run(drop_database())


async def drop_database() -> None:
    admin = await asyncpg.connect(ADMIN)
    try:
        await admin.execute(f'DROP DATABASE IF EXISTS "{NAME}" WITH (FORCE)')
    finally:
        await admin.close()


if __name__ == "__main__":
    main()
