"""What each index of ``async_jobs`` costs an enqueue: the batch statement and the single
insert, run on copies of the table that differ only in their indexes, in turns.

    .venv/bin/python bench/index_costs.py --rounds 5 [--json F]

Variants (each a fresh table ``LIKE async_jobs`` with its defaults, constraints and
statement-level ``NOTIFY`` trigger):
- ``as migrated``: every index of ``async_jobs``, read from the catalog, so the script follows
  the migrations;
- ``without <index>``: all of them but one (an index whose predicate a new pending job does
  not match costs the statement's set-up only), but for the idempotency key's, which the
  inserts' ``ON CONFLICT`` names;
- ``listings by created_at (before 0018)``: the three listing indexes as they were before
  migration 0018 (``(created_at DESC, id DESC)``, ``(tenant_id, created_at DESC, id DESC)``
  and ``(created_at DESC, id DESC) WHERE status IN ('failed', 'cancelled')``) instead of the
  ones on the id;
- ``only the indexes a new job writes``: the four entries of a job due at once, none of the
  indexes a statement opens but does not write;
- ``lease check only``: without the four CHECK constraints on ranges, keeping the lease's.

``--only VARIANT`` (repeatable) runs those variants beside ``as migrated``, for more rounds
of one comparison in the same time.

Batches: 10 statements of ``insert_jobs_alike`` of 1,000 like jobs, each in its own
transaction, parameters made beforehand (as ``enqueue_many`` sent a batch before it wrote
its later lists by ``COPY``, less its client work). ``COPY``: the same, each batch one binary
``COPY`` of the rows ``enqueue_many`` encodes (``_copy_data``), made beforehand. Single:
2,000 ``insert_job`` statements, one per call, each its own commit. PostgreSQL's CPU is read
from ``/proc`` for the backends of the benchmark's database, so the server must run on this
machine. Figures are medians over the rounds.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import statistics
from pathlib import Path
from typing import Any

import asyncpg
from enqueue_floor import fresh, measure, opened  # beside this file: run as bench/index_costs.py

from async_jobs import EnqueueRequest
from async_jobs.stores.postgres.inserts import (
    COPY_COLUMNS,
    _copy_data,
    _insert_values,
    _once,
    _statement_params,
)
from async_jobs.stores.postgres.queries import QUERIES

DSN = "postgresql://postgres@127.0.0.1:5432/index_costs_bench"
BATCH, BATCHES, SINGLES = 1000, 10, 2000
BY_ID = ("async_jobs_tenant_ids", "async_jobs_failed_ids")  # the listing indexes since 0018
# The index entries a new job due at once writes (README, Design notes); a statement also
# opens every other index and readies its predicate, though it writes none of them.
WRITTEN = ("async_jobs_pkey", "async_jobs_tenant_ids", "async_jobs_ready", "async_jobs_due")
# The CHECK that keeps a lease on running jobs only; the others check ranges that the
# domain also validates (attempts, max_attempts, delay tolerance, timeout).
LEASE_CHECK = "async_jobs_lease_only_when_running"
BY_CREATED_AT = {  # the listing indexes before 0018
    "async_jobs_created": "CREATE INDEX {name} ON {table} (created_at DESC, id DESC)",
    "async_jobs_tenant_created": (
        "CREATE INDEX {name} ON {table} (tenant_id, created_at DESC, id DESC)"
    ),
    "async_jobs_failed_created": (
        "CREATE INDEX {name} ON {table} (created_at DESC, id DESC)"
        " WHERE status IN ('failed', 'cancelled')"
    ),
}


def variants(indexes: dict[str, str], checks: dict[str, str]) -> dict[str, dict[str, Any]]:
    """Each variant's table, as the arguments of ``make_table``: its indexes (name ->
    definition, a ``{name}``/``{table}`` template) and, where it differs, its CHECK
    constraints. Exits when ``async_jobs`` lacks what a variant names."""
    if LEASE_CHECK not in checks or not set(WRITTEN) <= set(indexes):
        raise SystemExit("async_jobs is not as bench/index_costs.py knows it: update variants()")
    found: dict[str, dict[str, Any]] = {"as migrated": {"indexes": dict(indexes)}}
    for name in indexes:
        if name == "async_jobs_idempotency_key":  # the inserts' ON CONFLICT needs it
            continue
        found[f"without {name}"] = {"indexes": {n: d for n, d in indexes.items() if n != name}}
    found["listings by created_at (before 0018)"] = {
        "indexes": {**{n: d for n, d in indexes.items() if n not in BY_ID}, **BY_CREATED_AT}
    }
    found["only the indexes a new job writes"] = {
        "indexes": {n: d for n, d in indexes.items() if n in WRITTEN}
    }
    found["lease check only"] = {"indexes": dict(indexes), "checks": [checks[LEASE_CHECK]]}
    return found


async def check_templates(conn: asyncpg.Connection) -> dict[str, str]:
    """The CHECK constraints of ``async_jobs`` as migrated: name -> definition, as
    ``pg_get_constraintdef`` gives it."""
    rows = await conn.fetch(
        "SELECT conname, pg_get_constraintdef(oid) AS definition FROM pg_constraint"
        " WHERE conrelid = 'async_jobs'::regclass AND contype = 'c'"
    )
    return {r["conname"]: r["definition"] for r in rows}


async def index_templates(conn: asyncpg.Connection) -> dict[str, str]:
    """The indexes of ``async_jobs`` as migrated: name -> definition, a template with
    ``{name}`` and ``{table}`` in place of the index's and the table's names."""
    rows = await conn.fetch(
        "SELECT indexname, indexdef FROM pg_indexes WHERE tablename = 'async_jobs'"
    )
    return {
        r["indexname"]: re.sub(
            r"^(CREATE (?:UNIQUE )?INDEX) \S+ ON public\.async_jobs ",
            r"\1 {name} ON {table} ",
            r["indexdef"],
        )
        for r in rows
    }


async def make_table(
    conn: asyncpg.Connection,
    table: str,
    indexes: dict[str, str],
    checks: list[str] | None = None,
    trigger: bool = True,
) -> None:
    """``table``, made anew ``LIKE async_jobs`` with its defaults, ``indexes`` (templates of
    ``index_templates``), the CHECK constraints of ``async_jobs`` (or those of ``checks``,
    definitions as ``pg_get_constraintdef`` gives them) and, with ``trigger``, its
    statement-level ``NOTIFY`` trigger."""
    constraints = " INCLUDING CONSTRAINTS" if checks is None else ""
    await conn.execute(
        f"DROP TABLE IF EXISTS {table}; "
        f"CREATE TABLE {table} (LIKE async_jobs INCLUDING DEFAULTS{constraints})"
    )
    for check in checks or []:
        await conn.execute(f"ALTER TABLE {table} ADD {check}")
    if trigger:
        await conn.execute(
            f"CREATE TRIGGER {table}_inserted AFTER INSERT ON {table} "
            "FOR EACH STATEMENT EXECUTE FUNCTION async_jobs_notify_inserted()"
        )
    for name, definition in indexes.items():
        await conn.execute(definition.format(name=f"{table}_{name}", table=table))


async def chosen(conn: asyncpg.Connection, only: list[str] | None) -> dict[str, dict[str, Any]]:
    """The variants to run: every one, or ``as migrated`` and those named in ``only``."""
    found = variants(await index_templates(conn), await check_templates(conn))
    if not only:
        return found
    unknown = sorted(set(only) - set(found))
    if unknown:
        raise SystemExit(f"index_costs: no variant named {unknown}; see the docstring")
    return {v: change for v, change in found.items() if v == "as migrated" or v in only}


async def main(args: argparse.Namespace) -> dict[str, Any]:
    app, conn = await opened(args.dsn)
    like = list(app._builder.built([EnqueueRequest("noop") for _ in range(BATCH)], []))
    tables: dict[str, str] = {}
    for number, (variant, change) in enumerate((await chosen(conn, args.only)).items()):
        table = f"index_costs_{number}"
        tables[variant] = table
        await make_table(conn, table, **change)
    found: dict[str, dict[str, list[dict[str, float]]]] = {
        v: {"batch": [], "copy": [], "single": []} for v in tables
    }
    now = await conn.fetchval("SELECT now()")
    for round_ in range(args.rounds):
        for variant, table in tables.items():
            into = f"INTO {table} AS j"
            batch_sql = QUERIES["insert_jobs_alike"].replace("INTO async_jobs AS j", into)
            single_sql = QUERIES["insert_job"].replace("INTO async_jobs AS j", into)
            params = [_statement_params([fresh(j) for j in like])[1] for _ in range(BATCHES)]
            copies = [_copy_data([fresh(j) for j in like], now).data for _ in range(BATCHES)]
            singles = [
                (*_insert_values(job := fresh(like[0])), None, job.created_at)
                for _ in range(SINGLES)
            ]

            async def batches(params: list[list[Any]] = params, sql: str = batch_sql) -> None:
                for args_ in params:
                    async with conn.transaction():
                        await conn.fetch(sql, *args_)

            async def copy(datas: list[bytes] = copies, table: str = table) -> None:
                for data in datas:
                    async with conn.transaction():
                        await conn.copy_to_table(
                            table, source=_once(data), columns=COPY_COLUMNS, format="binary"
                        )

            async def single(rows: list[tuple[Any, ...]] = singles, sql: str = single_sql) -> None:
                for args_ in rows:
                    await conn.fetch(sql, *args_)

            await conn.execute(f"TRUNCATE {table}")
            found[variant]["batch"].append(await measure(BATCH * BATCHES, batches, args.dsn))
            await conn.execute(f"TRUNCATE {table}")
            found[variant]["copy"].append(await measure(BATCH * BATCHES, copy, args.dsn))
            await conn.execute(f"TRUNCATE {table}")
            found[variant]["single"].append(await measure(SINGLES, single, args.dsn))
        print(f"round {round_ + 1} of {args.rounds} done", flush=True)
    for table in tables.values():
        await conn.execute(f"DROP TABLE {table}")
    await conn.close()
    await app.close()
    summary = {
        variant: {
            kind: {key: statistics.median(r[key] for r in runs) for key in runs[0]}
            for kind, runs in kinds.items()
        }
        for variant, kinds in found.items()
    }
    return {"rounds": args.rounds, "summary": summary, "runs": found}


def write_figures(path: Path, figures: dict[str, Any]) -> None:
    """``figures`` as JSON at ``path``, with this machine's processors."""
    models = [
        line.split(":", 1)[1].strip()
        for line in Path("/proc/cpuinfo").read_text().splitlines()
        if line.startswith("model name")
    ]
    figures["machine"] = {"cpus": os.cpu_count(), "cpu_model": models[0] if models else None}
    path.write_text(json.dumps(figures, indent=1), encoding="utf-8")


def report(result: dict[str, Any]) -> None:
    summary = result["summary"]
    base = summary["as migrated"]
    print(f"\n{'variant':46s} {'batch jobs/s':>12s} {'vs':>5s} {'µs/row':>7s}"
          f" {'copy jobs/s':>11s} {'vs':>5s} {'µs/row':>7s}"
          f" {'single/s':>9s} {'vs':>5s} {'µs/call':>8s}")  # fmt: skip
    for variant, kinds in summary.items():
        columns = []
        for kind in ("batch", "copy", "single"):
            figures = kinds[kind]
            ratio = figures["jobs_per_s"] / base[kind]["jobs_per_s"]
            columns.append(
                f"{figures['jobs_per_s']:11,.0f} {ratio:5.2f} {figures['server_us']:7.1f}"
            )
        print(f"{variant:46s} " + "  ".join(columns))


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dsn", default=DSN)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--json", type=Path, help="write the figures here")
    parser.add_argument(
        "--only",
        action="append",
        metavar="VARIANT",
        help="run this variant (repeat for more) beside 'as migrated', not every one",
    )
    options = parser.parse_args()
    figures = asyncio.run(main(options))
    report(figures)
    if options.json is not None:
        write_figures(options.json, figures)
