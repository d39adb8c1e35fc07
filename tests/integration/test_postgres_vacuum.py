"""A vacuum of the jobs table removes the claim's dead index entries even when few of the
table's pages hold dead rows (migration 0017, ``vacuum_index_cleanup = on``).

PostgreSQL 14 and later skip a vacuum's index pass when fewer than 2% of the table's pages
hold dead rows. On a big table the jobs a queue has claimed or deleted then stay in the
claim's indexes, at the start of the range every claim reads. The test builds that case on
a small scale: many finished jobs, a few thousand jobs due and then gone, a plain VACUUM (as
autovacuum runs it), and counts the pages the claim's first probe reads. The same case
with the setting PostgreSQL defaults to shows that the set-up does trigger the skip.
"""

from __future__ import annotations

import json

import asyncpg
import pytest

FINISHED, GONE = 300_000, 3_000

FILL_FINISHED = f"""
INSERT INTO async_jobs (id, tenant_id, use_case, type, status, attempts, max_attempts,
                        run_at, delay_tolerance_seconds, deadline_at, created_at,
                        started_at, finished_at)
SELECT gen_random_uuid(), 'old', 'default', 'echo', 'succeeded', 1, 3,
       now() - interval '1 day', 300, now() - interval '1 day',
       now() - interval '1 day', now() - interval '1 day', now() - interval '1 day'
FROM generate_series(1, {FINISHED})
"""
FILL_DUE = f"""
INSERT INTO async_jobs (id, tenant_id, use_case, type, status, attempts, max_attempts,
                        run_at, delay_tolerance_seconds, deadline_at)
SELECT gen_random_uuid(), 't' || (i % 10), 'default', 'echo', 'pending', 0, 3,
       now() - make_interval(secs => {GONE} - i), 300, now() + interval '1 hour'
FROM generate_series(1, {GONE}) AS i
"""
# The first probe of async_jobs_due_tenants (0015): the earliest due jobs of a use case.
PROBE = """
EXPLAIN (ANALYZE, BUFFERS, FORMAT JSON)
SELECT tenant_id FROM async_jobs
WHERE status = 'pending' AND use_case = 'default' AND run_at <= now()
ORDER BY run_at LIMIT 11
"""


async def _pages_read_by_probe_after_vacuum(conn: asyncpg.Connection) -> tuple[int, str]:
    """Fill, let the due jobs go, vacuum; the pages the probe then reads, and its plan."""
    await conn.execute(FILL_FINISHED)
    await conn.execute(FILL_DUE)
    await conn.execute("VACUUM (ANALYZE) async_jobs")  # the due jobs' pages all-visible
    await conn.execute("DELETE FROM async_jobs WHERE tenant_id <> 'old'")
    await conn.execute("VACUUM async_jobs")
    raw = await conn.fetchval(PROBE)
    plan = json.loads(raw)[0]["Plan"]
    assert plan["Actual Rows"] == 0
    pages = int(plan["Shared Hit Blocks"]) + int(plan["Shared Read Blocks"])
    return pages, json.dumps(plan, indent=1)


async def test_vacuum_removes_the_claims_dead_entries_when_few_pages_hold_them(
    pg_database: str,
) -> None:
    conn = await asyncpg.connect(pg_database)
    try:
        options = await conn.fetchval(
            "SELECT reloptions FROM pg_class WHERE oid = 'async_jobs'::regclass"
        )
        assert "vacuum_index_cleanup=on" in options
        pages, plan = await _pages_read_by_probe_after_vacuum(conn)
        assert pages <= 4, plan  # the index's root and one leaf, give or take a level
    finally:
        await conn.close()


async def test_with_postgresqls_default_the_dead_entries_stay(pg_database: str) -> None:
    """The control: without the setting, the same vacuum skips the index pass and the probe
    walks the entries of the jobs that are gone (some 3,000, over a dozen leaf pages)."""
    conn = await asyncpg.connect(pg_database)
    try:
        if await conn.fetchval("SELECT current_setting('server_version_num')::int < 140000"):
            pytest.skip("PostgreSQL before 14 never skips the index pass")
        await conn.execute("ALTER TABLE async_jobs SET (vacuum_index_cleanup = auto)")
        pages, plan = await _pages_read_by_probe_after_vacuum(conn)
        assert pages >= 10, plan
    finally:
        await conn.close()
