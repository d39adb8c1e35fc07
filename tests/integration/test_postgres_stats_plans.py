"""The last hour of GET /stats, retention and listings by state are answered from indexes
(0009), never by a scan of the finished jobs, whose number grows without bound
(docs/scale.md). Sequential scans are disabled so that the plan shows what the indexes
allow, whatever the planner would prefer on a table this small; the figures on a big table
are in docs/scale.md."""

from __future__ import annotations

import asyncpg
import pytest

from async_jobs.stores.postgres.store import QUERIES

pytestmark = pytest.mark.postgres

SEED = """
INSERT INTO async_jobs (id, tenant_id, use_case, type, status, attempts, max_attempts,
                        run_at, delay_tolerance_seconds, deadline_at, created_at,
                        started_at, finished_at)
SELECT gen_random_uuid(), 't' || (i % 10), 'default', 'noop', 'succeeded', 1, 3,
       c, 60, c + interval '1 min', c, c, c + interval '1 s'
FROM generate_series(1, 5000) AS i,
     LATERAL (SELECT now() - interval '2 days' * (i::float8 / 5000)) AS t(c)
"""


async def _plan(dsn: str, sql: str, *args: object) -> str:
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute(SEED)
        await conn.execute("ANALYZE async_jobs")
        await conn.execute("SET enable_seqscan = off")
        rows = await conn.fetch(f"EXPLAIN {sql}", *args)
    finally:
        await conn.close()
    return "\n".join(r[0] for r in rows)


@pytest.mark.parametrize("tenant", [None, "t3"])
async def test_the_last_hour_of_stats_is_read_from_indexes(
    pg_database: str, tenant: str | None
) -> None:
    plan = await _plan(pg_database, QUERIES["stats_recent"], tenant)
    assert "Seq Scan on async_jobs" not in plan, plan
    for index in ("async_jobs_finished", "async_jobs_active", "async_jobs_retrying"):
        assert index in plan, plan


async def test_retention_reads_one_state_from_its_index(pg_database: str) -> None:
    plan = await _plan(pg_database, QUERIES["delete_finished"], "succeeded", 86400.0, 1000)
    assert "Seq Scan on async_jobs" not in plan, plan
    assert "async_jobs_finished" in plan, plan


@pytest.mark.parametrize("state", ["failed", "cancelled"])
async def test_a_listing_by_a_state_that_ended_badly_skips_the_succeeded_rows(
    pg_database: str, state: str
) -> None:
    plan = await _plan(
        pg_database,
        QUERIES["list_jobs"],
        None, state, None, None, None, None, None, None, 50, None,
    )  # fmt: skip
    assert "async_jobs_failed_ids" in plan, plan
