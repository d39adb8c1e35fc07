"""Empty table vs a big one, interleaved: ``async-jobs bench`` run in turns on two databases,
one empty and one holding ``--history`` finished and ``--backlog`` not-due jobs over
``--tenants`` tenants; medians per metric and the ratio big/empty. Then the plans of the
claim (its statements, through auto_explain) and of the listings on the big table.

    .venv/bin/python bench/scale.py --history 1000000 --backlog 100000 --tenants 1000

Interleaving matters on a shared machine: the two figures of a round see the same load.
The big database is seeded once (minutes for ten million rows) and reused by later runs.
Results: ``bench/results/scale-<history>-<backlog>-<tenants>.json`` and ``...-plans.txt``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import asyncpg

from async_jobs.stores.postgres.queries import QUERIES

RESULTS = Path(__file__).parent / "results"
SERVER = "postgresql://postgres@127.0.0.1:5432/"
KEYS = (
    "enqueue_single_jobs_per_s",
    "enqueue_batch_jobs_per_s",
    "drain_jobs_per_s",
    "latency_p50_ms",
    "latency_p99_ms",
)


def bench_once(dsn: str, args: argparse.Namespace, shape: list[str], out: Path) -> dict[str, Any]:
    argv = [
        sys.executable, "-m", "async_jobs", "bench", "--dsn", dsn, "--jobs", str(args.jobs),
        "--latency-jobs", str(args.latency_jobs), "--json", str(out), *shape,
    ]  # fmt: skip
    subprocess.run(argv, check=True, stdout=subprocess.DEVNULL)
    result: dict[str, Any] = json.loads(out.read_text(encoding="utf-8"))
    return result


# The claim's statements are inside a function: auto_explain, sent to this session as
# notices, shows each of them with its real row counts and buffers.
AUTO_EXPLAIN = [
    "LOAD 'auto_explain'",
    "SET auto_explain.log_min_duration = 0",
    "SET auto_explain.log_analyze = on",
    "SET auto_explain.log_buffers = on",
    "SET auto_explain.log_nested_statements = on",
    "SET client_min_messages = log",
]
DUE_JOBS_SQL = """
INSERT INTO async_jobs (id, tenant_id, use_case, type, max_attempts, run_at,
                        delay_tolerance_seconds, deadline_at)
SELECT gen_random_uuid(), 'default', 'default', 'noop', 3, now(), 60, now() + interval '1 min'
FROM generate_series(1, $1)
"""
CLAIM_SQL = """
SELECT count(*) FROM async_jobs_claim(50, '{}'::text[], '{}'::text[], 'plan-check', 30,
    100000, '{}'::text[], '{}'::int[], '{}'::text[], '{}'::text[], '{}'::int[],
    '{}'::float8[], false)
"""


def _listing(tenant: str | None = None, status: str | None = None) -> tuple[object, ...]:
    """The parameters of the store's own listing statement (list_jobs), as the API and the
    dashboard run it: a tenant and a state, no other filter, no cursor, 50 rows."""
    return (tenant, status, None, None, None, None, None, None, 50, None)


LISTINGS = {
    "list, newest first": _listing(),
    "list, one tenant": _listing("bench-t7"),
    "list, one tenant and state": _listing("bench-t7", "pending"),
}


async def plans(dsn: str) -> str:
    conn = await asyncpg.connect(dsn)
    notes: list[str] = []
    conn.add_log_listener(lambda _c, msg: notes.append(str(msg.message)))
    out: list[str] = []
    try:
        tx = conn.transaction()
        await tx.start()
        await conn.execute(DUE_JOBS_SQL, 1000)
        for statement in AUTO_EXPLAIN:
            await conn.execute(statement)
        await conn.fetchval(CLAIM_SQL)  # the first call plans; the second is the steady one
        notes.clear()
        await conn.fetchval(CLAIM_SQL)
        await asyncio.sleep(0.2)  # wait-ok: notices arrive after the result
        out.append("== claim of 50 (1,000 due jobs in tenant 'default'), second call ==")
        out.extend(notes)
        await conn.execute("SET client_min_messages = warning")
        for title, args in LISTINGS.items():
            rows = await conn.fetch(f"EXPLAIN (ANALYZE, BUFFERS) {QUERIES['list_jobs']}", *args)
            out.append(f"== {title} ==")
            out.extend(r[0] for r in rows)
        await tx.rollback()
    finally:
        await conn.close()
    return "\n".join(out)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--history", type=int, default=1_000_000)
    parser.add_argument("--backlog", type=int, default=100_000)
    parser.add_argument("--tenants", type=int, default=1_000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--jobs", type=int, default=10_000)
    parser.add_argument("--latency-jobs", type=int, default=300)
    parser.add_argument("--big-db", default="scale_bench_big")
    parser.add_argument("--empty-db", default="scale_bench_empty")
    parser.add_argument(
        "--server",
        default=SERVER,
        help="the server of both databases, a DSN ending in / (default %(default)s)",
    )
    parser.add_argument(
        "--tag", default="", help="added to the results' file names (e.g. the server's settings)"
    )
    args = parser.parse_args()
    shape = ["--history", str(args.history), "--backlog", str(args.backlog)]
    shape += ["--tenants", str(args.tenants)]
    RESULTS.mkdir(exist_ok=True)
    name = f"scale-{args.history}-{args.backlog}-{args.tenants}" + (
        f"-{args.tag}" if args.tag else ""
    )
    tmp = RESULTS / f".{uuid.uuid4().hex}.json"
    rounds: list[dict[str, Any]] = []
    for i in range(args.rounds):
        empty = bench_once(args.server + args.empty_db, args, [], tmp)
        big = bench_once(args.server + args.big_db, args, shape, tmp)
        rounds.append({"empty": empty, "big": big})
        print(f"round {i + 1}: " + ", ".join(
            f"{k} {empty[k]:,.1f} -> {big[k]:,.1f}" for k in KEYS), flush=True)  # fmt: skip
    tmp.unlink(missing_ok=True)
    summary = {}
    for key in KEYS:
        e = statistics.median(r["empty"][key] for r in rounds)
        b = statistics.median(r["big"][key] for r in rounds)
        summary[key] = {"empty": e, "big": b, "ratio": b / e}
        print(f"{key:<28} empty {e:>10,.1f}  big {b:>10,.1f}  big/empty {b / e:.2f}")
    report = {"shape": vars(args), "summary": summary, "rounds": rounds}
    (RESULTS / f"{name}.json").write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    text = asyncio.run(plans(args.server + args.big_db))
    (RESULTS / f"{name}-plans.txt").write_text(text + "\n", encoding="utf-8")
    print(f"wrote {RESULTS / name}.json and -plans.txt")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
