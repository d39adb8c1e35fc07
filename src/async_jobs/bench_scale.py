"""The shape of the jobs table under ``async-jobs bench``: finished jobs already stored
(``--history``), pending jobs that are not due (``--backlog``), spread over ``--tenants``
tenants, and the sizes of the table and its indexes around the measurements.

The rows are written by PostgreSQL itself (``generate_series``, one statement per million
rows), so ten million take minutes, not hours. The measured jobs stay in the tenant and use
case ``default``; the seeded rows are in tenants ``bench-t<n>`` and use cases ``default`` and
``bench-other-<n>``, so the measurements count and clear their own jobs through the indexes
of the claim (never by a scan of the history). A database already holding the asked shape
(recorded in the table's comment) is reused, so runs after the first start at once.

Standard library only at module level (the CLI imports it to build its parser).
"""

from __future__ import annotations

import argparse
import dataclasses
import time
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import asyncpg

MEASURED_TENANT = "default"
MEASURED_USE_CASE = "default"
OTHER_USE_CASES = 4  # the backlog is spread over 'default' and this many other use cases
SEED_CHUNK = 1_000_000
SHAPE_COMMENT_PREFIX = "async-jobs bench shape: "

# Finished jobs created over the last week, each finished a few seconds after it was created.
SEED_HISTORY_SQL = """
INSERT INTO async_jobs (
    id, tenant_id, use_case, type, payload, priority, status, attempts, max_attempts,
    run_at, delay_tolerance_seconds, deadline_at, result, worker_id,
    created_at, updated_at, started_at, finished_at)
SELECT gen_random_uuid(),
       'bench-t' || (i % $3),
       CASE WHEN i % 5 = 0 THEN 'default' ELSE 'bench-other-' || (i % 5) END,
       'bench_history', '{}'::jsonb, 'medium', 'succeeded', 1, 3,
       c, 60, c + interval '60 seconds', '{"ok": true}'::jsonb, 'bench-seed',
       c, c + interval '2 seconds', c + interval '1 second', c + interval '2 seconds'
FROM generate_series($1::bigint, $2::bigint) AS i,
     LATERAL (SELECT now() - interval '7 days' * (i::float8 / $4)) AS t(c)
"""

# Pending jobs due in one to two days: claimable rows the claim must walk past.
SEED_BACKLOG_SQL = """
INSERT INTO async_jobs (
    id, tenant_id, use_case, type, payload, priority, status, attempts, max_attempts,
    run_at, delay_tolerance_seconds, deadline_at, created_at, updated_at)
SELECT gen_random_uuid(),
       'bench-t' || (i % $3),
       CASE WHEN i % 5 = 0 THEN 'default' ELSE 'bench-other-' || (i % 5) END,
       'bench_backlog', '{}'::jsonb, 'medium', 'pending', 0, 3,
       r, 60, r + interval '60 seconds', now(), now()
FROM generate_series($1::bigint, $2::bigint) AS i,
     LATERAL (SELECT now() + interval '1 day' + interval '1 day' * (i::float8 / $4)) AS t(r)
"""

UNFINISHED_SQL = (
    "SELECT count(*) FROM async_jobs WHERE status IN ('pending', 'queued', 'running') "
    f"AND use_case = '{MEASURED_USE_CASE}' AND tenant_id = '{MEASURED_TENANT}'"
)
MEASURED_COUNTS_SQL = (
    "SELECT status::text, count(*) FROM async_jobs "
    f"WHERE tenant_id = '{MEASURED_TENANT}' AND type IN ('noop', 'noop_timed') GROUP BY 1"
)
CLEAR_MEASURED_SQL = (
    f"DELETE FROM async_jobs WHERE tenant_id = '{MEASURED_TENANT}' "
    "AND type IN ('noop', 'noop_timed')"
)

SIZES_SQL = """
SELECT c.relname AS name, pg_relation_size(c.oid) AS bytes, c.relkind::text AS kind
FROM pg_class c
WHERE c.oid = 'async_jobs'::regclass
   OR c.oid IN (SELECT indexrelid FROM pg_index WHERE indrelid = 'async_jobs'::regclass)
ORDER BY c.relkind DESC, c.relname
"""
TUPLE_STATS_SQL = """
SELECT n_live_tup, n_dead_tup, n_tup_upd, n_tup_hot_upd, n_tup_del,
       pg_total_relation_size('async_jobs') AS total_bytes,
       autovacuum_count, autoanalyze_count
FROM pg_stat_user_tables WHERE relid = 'async_jobs'::regclass
"""


@dataclasses.dataclass(frozen=True, slots=True)
class Shape:
    history: int = 0
    backlog: int = 0
    tenants: int = 1

    @property
    def empty(self) -> bool:
        return self.history == 0 and self.backlog == 0

    def comment(self) -> str:
        return f"{SHAPE_COMMENT_PREFIX}{self.history}/{self.backlog}/{self.tenants}"


def add_shape_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--history",
        type=int,
        default=0,
        help="finished jobs in the table before the measurements (written in SQL)",
    )
    parser.add_argument(
        "--backlog",
        type=int,
        default=0,
        help="pending jobs not due yet (over the bench's and other use cases) in the table",
    )
    parser.add_argument(
        "--tenants", type=int, default=1, help="tenants the history and backlog are spread over"
    )


def check_shape(shape: Shape) -> str | None:
    """The complaint about bad shape options, or None."""
    if shape.history < 0 or shape.backlog < 0:
        return "--history and --backlog must not be negative"
    if shape.tenants < 1:
        return "--tenants must be at least 1"
    return None


async def shape_table(conn: asyncpg.Connection, shape: Shape, log: Any) -> float:
    """Give the (migrated) table the shape; seconds spent writing rows (0 when reused)."""
    current = await conn.fetchval("SELECT obj_description('async_jobs'::regclass, 'pg_class')")
    if current == shape.comment():
        await clear_measured(conn, shape)
        log(f"table already holds {shape.comment().removeprefix(SHAPE_COMMENT_PREFIX)}")
        return 0.0
    await conn.execute("TRUNCATE async_jobs CASCADE")
    started = time.perf_counter()
    for label, sql, total in (
        ("history", SEED_HISTORY_SQL, shape.history),
        ("backlog", SEED_BACKLOG_SQL, shape.backlog),
    ):
        for first in range(0, total, SEED_CHUNK):
            last = min(first + SEED_CHUNK, total) - 1
            await conn.execute(sql, first, last, shape.tenants, float(max(total, 1)))
            log(f"seeded {label}: {last + 1:,} of {total:,} rows")
    if not shape.empty:
        log("VACUUM (ANALYZE) async_jobs")
        await conn.execute("VACUUM (ANALYZE) async_jobs")
    await conn.execute(f"COMMENT ON TABLE async_jobs IS '{shape.comment()}'")
    return time.perf_counter() - started


async def clear_measured(conn: asyncpg.Connection, shape: Shape) -> None:
    """Remove the jobs of the last scenario: TRUNCATE on an empty shape; on a seeded one,
    delete them and vacuum, which leaves the table as seeded (few dead tuples)."""
    if shape.empty:
        await conn.execute("TRUNCATE async_jobs CASCADE")  # and its webhook deliveries
        return
    await conn.execute(CLEAR_MEASURED_SQL)
    await conn.execute("VACUUM (ANALYZE) async_jobs")


async def unfinished(conn: asyncpg.Connection) -> int:
    return int(await conn.fetchval(UNFINISHED_SQL))


async def measured_counts(conn: asyncpg.Connection) -> dict[str, int]:
    return {r[0]: int(r[1]) for r in await conn.fetch(MEASURED_COUNTS_SQL)}


async def table_sizes(conn: asyncpg.Connection) -> dict[str, Any]:
    """Sizes (MiB) of the table and of each of its indexes, and its tuple counters."""
    rows = await conn.fetch(SIZES_SQL)
    stats = await conn.fetchrow(TUPLE_STATS_SQL)
    return {
        "relations_mb": {r["name"]: round(r["bytes"] / 2**20, 2) for r in rows},
        **(dict(stats.items()) if stats is not None else {}),
    }


def render_sizes(sizes: dict[str, Any]) -> list[str]:
    relations = sizes.get("relations_mb", {})
    lines = ["", f"  {'relation':<36} {'MiB':>12}"]
    lines += [f"  {name:<36} {mb:>12,.1f}" for name, mb in relations.items()]
    if "n_live_tup" in sizes:
        lines.append(
            f"  live {sizes['n_live_tup']:,}, dead {sizes['n_dead_tup']:,}, updates "
            f"{sizes['n_tup_upd']:,} of which HOT {sizes['n_tup_hot_upd']:,}"
        )
    return lines
