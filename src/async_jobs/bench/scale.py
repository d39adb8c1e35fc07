"""The shape of the jobs table under ``async-jobs bench``: finished jobs already stored
(``--history``), pending jobs that are not due (``--backlog``), spread over ``--tenants``
tenants, and the sizes of the table and its indexes around the measurements.

The rows are written by PostgreSQL itself (``generate_series``, one statement per million
rows), so ten million take minutes, not hours. Every statement the benchmark runs on the
table is a named query ``bench_*`` of the PostgreSQL store's one SQL file
(``stores/postgres/queries.sql``), loaded by ``queries()``. The measured jobs stay in the
tenant and use case ``default``; the seeded rows are in tenants ``bench-t<n>`` and use
cases ``default`` and ``bench-other-<n>``, so the measurements count and clear their own jobs
through the indexes of the claim (never by a scan of the history). A database already
holding the asked shape (recorded in the table's comment) is reused, so runs after the
first start at once.

Standard library only at module level (the CLI imports it to build its parser).
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import time
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import asyncpg

OTHER_USE_CASES = 4  # the backlog is spread over 'default' and this many other use cases
SEED_CHUNK = 1_000_000
SHAPE_COMMENT_PREFIX = "async-jobs bench shape: "


@functools.cache
def queries() -> dict[str, str]:
    """The benchmark's named queries, from the PostgreSQL store's SQL file."""
    from async_jobs.stores.sqlfile import load_queries

    return load_queries("async_jobs.stores.postgres")


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
    q = queries()
    current = await conn.fetchval(q["bench_shape"])
    if current == shape.comment():
        await clear_measured(conn, shape)
        log(f"table already holds {shape.comment().removeprefix(SHAPE_COMMENT_PREFIX)}")
        return 0.0
    await conn.execute(q["bench_truncate"])
    started = time.perf_counter()
    for label, sql, total in (
        ("history", q["bench_seed_history"], shape.history),
        ("backlog", q["bench_seed_backlog"], shape.backlog),
    ):
        for first in range(0, total, SEED_CHUNK):
            last = min(first + SEED_CHUNK, total) - 1
            await conn.execute(sql, first, last, shape.tenants, float(max(total, 1)))
            log(f"seeded {label}: {last + 1:,} of {total:,} rows")
    if not shape.empty:
        log("VACUUM (ANALYZE) async_jobs")
        await conn.execute(q["bench_vacuum"])
    # DDL takes no parameters: the comment (digits and a fixed prefix) is written in.
    await conn.execute(f"COMMENT ON TABLE async_jobs IS '{shape.comment()}'")
    return time.perf_counter() - started


async def clear_measured(conn: asyncpg.Connection, shape: Shape) -> None:
    """Remove the jobs of the last scenario: TRUNCATE on an empty shape; on a seeded one,
    delete them and vacuum, which leaves the table as seeded (few dead tuples)."""
    q = queries()
    if shape.empty:
        await conn.execute(q["bench_truncate"])  # and its webhook deliveries
        return
    await conn.execute(q["bench_clear_measured"])
    await conn.execute(q["bench_vacuum"])


async def unfinished(conn: asyncpg.Connection) -> int:
    """The measured jobs not ended yet (seeded rows are in other tenants)."""
    return int(await conn.fetchval(queries()["bench_unfinished"]))


async def measured_counts(conn: asyncpg.Connection) -> dict[str, int]:
    return {r[0]: int(r[1]) for r in await conn.fetch(queries()["bench_measured_counts"])}


async def truncate(conn: asyncpg.Connection) -> None:
    """Every job, and its webhook deliveries."""
    await conn.execute(queries()["bench_truncate"])


async def analyze(conn: asyncpg.Connection) -> None:
    """Fresh planner statistics before a drain (the same for both queues of the peers)."""
    await conn.execute(queries()["bench_analyze"])


async def status_counts(conn: asyncpg.Connection) -> dict[str, int]:
    """Jobs per status, the whole table."""
    return {r[0]: int(r[1]) for r in await conn.fetch(queries()["bench_status_counts"])}


async def latencies_ms(conn: asyncpg.Connection) -> list[float]:
    """Enqueue-to-start latency of every succeeded ``noop_timed`` job, in ms."""
    return [float(r[0]) * 1000 for r in await conn.fetch(queries()["bench_latencies"])]


async def server_version(conn: asyncpg.Connection) -> str:
    return str(await conn.fetchval(queries()["bench_server_version"]))


async def other_connections(conn: asyncpg.Connection) -> int:
    """Clients connected to this database besides ``conn``."""
    return int(await conn.fetchval(queries()["bench_other_connections"]))


async def table_sizes(conn: asyncpg.Connection) -> dict[str, Any]:
    """Sizes (MiB) of the table and of each of its indexes, and its tuple counters."""
    rows = await conn.fetch(queries()["bench_sizes"])
    stats = await conn.fetchrow(queries()["bench_tuple_stats"])
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
