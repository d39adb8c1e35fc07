"""PostgreSQL's own work for an enqueue, counted in instructions: within 0.05% from one run to
the next (the jobs' ids are new each time), so a change of a few percent shows where timed
runs on a noisy machine cannot tell it apart.

    .venv/bin/python bench/server_cost.py [--json F]        # ~4 minutes; needs valgrind

A throwaway cluster (``initdb`` in a temporary directory, the PostgreSQL of ``pg_config`` or
``/usr/lib/postgresql/*/bin``) is migrated. Beside ``async_jobs`` it gets a table ``LIKE
async_jobs`` for each variant below (indexes, defaults, CHECK constraints and the
statement-level ``NOTIFY`` trigger as migrated, but for the variant's change). The cluster
is stopped, and each variant's work runs in ``postgres --single`` under valgrind's callgrind,
on a copy of the cluster, which counts the instructions the backend executes:

- batch: binary ``COPY`` of 250 rows each, as ``enqueue_many`` writes the lists after its
  first (the rows that ``_copy_data`` encodes, made beforehand; a new transaction time every
  four, as in calls of 1,000 jobs);
- single: ``insert_job``, prepared once, then one ``EXECUTE`` per job, each its own
  transaction, as ``JobApp.enqueue`` does one per call.

Each runs twice, N and 5N times: the difference over 4N is the cost of one row (of one
statement), without the cost of starting. ``EXECUTE`` with literal values parses them, which
the binary parameters of the extended protocol spare a real call: compare single figures
between variants, not with a call's. The figures are of this machine's binaries only.

Variants:
- ``as migrated``;
- ``listings descending (0018-0022)``: ``(tenant_id, id DESC)`` and ``(id DESC) WHERE status
  IN ('failed', 'cancelled')`` instead of the ascending listing indexes of 0023;
- ``without async_jobs_tenant_ids``: what the tenant's listing index costs;
- ``only the indexes a new job writes``: without the others (nine at 0023), which every
  statement opens, and whose predicates it readies, though it writes none of them;
- ``lease check only``: without the four CHECK constraints on the ranges of attempts,
  max_attempts, delay tolerance and timeout, keeping the lease's;
- ``without CHECK constraints``;
- ``without the NOTIFY trigger``.
"""

from __future__ import annotations

import argparse
import asyncio
import glob
import os
import shutil
import subprocess
import tempfile
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg

# beside this file: run as a script
from index_costs import check_templates, fresh, index_templates, make_table, write_figures
from index_costs import variants as shared_variants

from async_jobs import EnqueueRequest, JobApp
from async_jobs.domain.jobs import NewJob
from async_jobs.stores.postgres.inserts import COPY_COLUMNS, _copy_data, _insert_values
from async_jobs.stores.postgres.queries import QUERIES

CHUNK, CHUNKS = 250, 20  # batch: N = 20 lists of 250 rows, then 5N
SINGLES = 200  # single: N = 200 statements, then 5N
DESCENDING = {
    "async_jobs_tenant_ids": "CREATE INDEX {name} ON {table} (tenant_id, id DESC)",
    "async_jobs_failed_ids": (
        "CREATE INDEX {name} ON {table} (id DESC) WHERE status IN ('failed', 'cancelled')"
    ),
}


class CostError(Exception):
    """A step of the measurement failed; the message says which and why."""


def bindir() -> Path:
    """The directory of PostgreSQL's programs: ``pg_config --bindir`` when it has
    ``postgres``, else the newest ``/usr/lib/postgresql/*/bin`` (Debian's layout)."""
    if shutil.which("pg_config"):
        found = Path(subprocess.run(
            ["pg_config", "--bindir"], capture_output=True, text=True, check=True
        ).stdout.strip())  # fmt: skip
        if (found / "postgres").exists():
            return found
    dirs = sorted(glob.glob("/usr/lib/postgresql/*/bin"), key=lambda d: int(d.split("/")[-2]))
    if not dirs:
        raise CostError("no PostgreSQL server programs found (pg_config, /usr/lib/postgresql)")
    return Path(dirs[-1])


def as_postgres(argv: list[str]) -> list[str]:
    """``argv`` run as the user ``postgres`` when this process is root (PostgreSQL refuses
    to run as root), else as it is."""
    return ["runuser", "-u", "postgres", "--", *argv] if os.geteuid() == 0 else argv


def run(argv: list[str], **kwargs: Any) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(as_postgres(argv), capture_output=True, text=True, **kwargs)
    if done.returncode != 0:
        raise CostError(f"{' '.join(argv[:2])} failed ({done.returncode}): {done.stderr[-800:]}")
    return done


def literal(value: Any) -> str:
    """``value`` as an SQL literal, for an ``EXECUTE``."""
    if value is None:
        return "NULL"
    if isinstance(value, bool | int | float):
        return repr(value)
    text = value.isoformat() if isinstance(value, datetime) else str(value)
    return "'" + text.replace("'", "''") + "'"


def one_line(sql: str) -> str:
    """A statement on one line without its comments: ``postgres --single`` ends a statement
    at each new line."""
    lines = (line.split("--", 1)[0].strip() for line in sql.splitlines())
    return " ".join(line for line in lines if line).rstrip(";")


def write_scripts(work: Path, tables: dict[str, str], jobs: list[NewJob]) -> None:
    """Writes the COPY lists and, per variant table, four scripts named
    ``{table}-{kind}-{count}.sql``: batch and single, N and 5N times."""
    now = datetime.now(UTC)
    columns = ", ".join(COPY_COLUMNS)
    for number in range(5 * CHUNKS):
        at = now + timedelta(milliseconds=15 * (number // 4))
        data = _copy_data([fresh(j) for j in jobs[:CHUNK]], at).data
        (work / f"list-{number}.bin").write_bytes(data)
    insert = one_line(QUERIES["insert_job"])
    executes = [
        "EXECUTE p(" + ", ".join(literal(v) for v in (*_insert_values(job), None, job.created_at))
        + ")"
        for job in (fresh(jobs[0]) for _ in range(5 * SINGLES))
    ]  # fmt: skip
    for table in tables.values():
        for count in (CHUNKS, 5 * CHUNKS):
            lines = [
                f"COPY {table} ({columns}) FROM '{work}/list-{n}.bin' (FORMAT binary)"
                for n in range(count)
            ]
            (work / f"{table}-batch-{count}.sql").write_text("\n".join(lines) + "\n")
        for count in (SINGLES, 5 * SINGLES):
            prepare = "PREPARE p AS " + insert.replace("INTO async_jobs AS j", f"INTO {table} AS j")
            text = "\n".join([prepare, *executes[:count]]) + "\n"
            (work / f"{table}-single-{count}.sql").write_text(text)


def instructions(bin_dir: Path, work: Path, data: Path, script: Path) -> int:
    """The instructions a single-user backend executes for ``script``, on a copy of the
    cluster at ``data``."""
    copy = work / "run"
    run(["rm", "-rf", str(copy)])
    run(["cp", "-a", str(data), str(copy)])
    out = work / "callgrind.out"
    with script.open() as stdin:
        done = subprocess.run(
            as_postgres([
                "valgrind", "--tool=callgrind", f"--callgrind-out-file={out}",
                str(bin_dir / "postgres"), "--single", "-D", str(copy),
                "-c", "shared_preload_libraries=", "cost",
            ]),
            stdin=stdin, capture_output=True, text=True,
        )  # fmt: skip
    if done.returncode != 0 or "ERROR:" in done.stdout + done.stderr:
        error = next(
            (line for line in (done.stdout + done.stderr).splitlines() if "ERROR" in line),
            done.stderr[-400:],
        )
        raise CostError(f"{script.name}: {error}")
    for line in out.read_text().splitlines():
        if line.startswith(("summary:", "totals:")):
            return int(line.split()[1])
    raise CostError(f"{script.name}: callgrind wrote no total")


async def prepare(bin_dir: Path, work: Path) -> tuple[Path, dict[str, str], list[NewJob]]:
    """The cluster at ``work/data``, migrated, with one table per variant; it is stopped on
    return. Returns it, the variants' tables and the jobs to write."""
    data, sockets = work / "data", work / "sockets"
    sockets.mkdir()
    if os.geteuid() == 0:
        shutil.chown(work, "postgres")
        shutil.chown(sockets, "postgres")
    run([str(bin_dir / "initdb"), "-D", str(data), "-A", "trust", "-U", "postgres"])
    port = 5400 + os.getpid() % 500
    options = f"-p {port} -k {sockets} -c listen_addresses=''"
    # With its log in a file: the server must not hold this process's output pipes.
    log = str(work / "server.log")
    run([str(bin_dir / "pg_ctl"), "-D", str(data), "-o", options, "-l", log, "-w", "start"])
    try:
        admin = await asyncpg.connect(host=str(sockets), port=port, user="postgres")
        await admin.execute("CREATE DATABASE cost")
        await admin.close()
        dsn = f"postgresql://postgres@/cost?host={sockets}&port={port}"
        app = JobApp(dsn, strict_types=False)
        await app.open()
        try:
            await app.migrate()
            jobs = list(app._builder.built([EnqueueRequest("noop") for _ in range(CHUNK)], []))
        finally:
            await app.close()
        conn = await asyncpg.connect(dsn)
        try:
            tables = await variant_tables(conn)
        finally:
            await conn.close()
    finally:
        run([str(bin_dir / "pg_ctl"), "-D", str(data), "-w", "stop"])
    return data, tables, jobs


async def variant_tables(conn: asyncpg.Connection) -> dict[str, str]:
    """Makes each variant's table; returns variant -> table."""
    indexes = await index_templates(conn)
    checks = await check_templates(conn)
    if not set(DESCENDING) <= set(indexes):
        raise CostError("async_jobs is not as this script knows it: update its variants")
    shared = shared_variants(indexes, checks)  # the variants both scripts run
    variants: dict[str, dict[str, Any]] = {
        "as migrated": shared["as migrated"],
        "listings descending (0018-0022)": {"indexes": {**indexes, **DESCENDING}},
        "without async_jobs_tenant_ids": shared["without async_jobs_tenant_ids"],
        "only the indexes a new job writes": shared["only the indexes a new job writes"],
        "lease check only": shared["lease check only"],
        "without CHECK constraints": {"indexes": indexes, "checks": []},
        "without the NOTIFY trigger": {"indexes": indexes, "trigger": False},
    }
    tables = {}
    for number, (variant, change) in enumerate(variants.items()):
        tables[variant] = f"cost_{number}"
        await make_table(conn, tables[variant], **change)
    return tables


async def main(args: argparse.Namespace) -> dict[str, Any]:
    if shutil.which("valgrind") is None:
        raise CostError("valgrind is missing (Debian: apt-get install valgrind)")
    bin_dir = bindir()
    with tempfile.TemporaryDirectory(prefix="server-cost-") as name:
        work = Path(name)
        data, tables, jobs = await prepare(bin_dir, work)
        write_scripts(work, tables, jobs)
        found: dict[str, dict[str, float]] = {}
        for variant, table in tables.items():
            figures = {}
            for kind, n, unit in (("batch", CHUNKS, CHUNK), ("single", SINGLES, 1)):
                small = instructions(bin_dir, work, data, work / f"{table}-{kind}-{n}.sql")
                large = instructions(bin_dir, work, data, work / f"{table}-{kind}-{5 * n}.sql")
                figures[kind] = (large - small) / (4 * n * unit)
            found[variant] = figures
            print(f"{variant}: {figures['batch']:,.0f} per row, {figures['single']:,.0f} per"
                  " single insert", flush=True)  # fmt: skip
        version = run([str(bin_dir / "postgres"), "--version"]).stdout.strip()
    return {"postgresql": version, "instructions": found}


def report(result: dict[str, Any]) -> None:
    found = result["instructions"]
    base = found["as migrated"]
    print(f"\n{result['postgresql']}; instructions executed by the backend")
    print(f"{'variant':34s} {'batch, per row':>15s} {'vs':>6s} {'single, per insert':>19s}"
          f" {'vs':>6s}")  # fmt: skip
    for variant, figures in found.items():
        print(
            f"{variant:34s} {figures['batch']:15,.0f} {figures['batch'] / base['batch']:6.3f}"
            f" {figures['single']:19,.0f} {figures['single'] / base['single']:6.3f}"
        )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--json", type=Path, help="write the figures here")
    options = parser.parse_args()
    try:
        figures = asyncio.run(main(options))
    except CostError as error:
        raise SystemExit(f"server_cost: {error}") from None
    report(figures)
    if options.json is not None:
        write_figures(options.json, figures)
