"""Our queue against PgQueuer on this machine: both benchmarks, several interleaved rounds,
medians, and the ratios.

    python bench/compare.py                       # 3 rounds, drains at concurrency 10 and 50
    python bench/compare.py --rounds 5 --jobs 20000

Each round runs, for every drain concurrency, ``python -m async_jobs bench`` (the
``async-jobs bench`` command) and ``bench/pgqueuer_peer.py`` one after the other, the order
alternating so neither always runs on a warmer machine. Every run starts from a freshly
created database (``--recreate``) of its own.

Medians: the drain rate and the worker's peak RSS per drain concurrency; enqueue rates and
latency percentiles over every run of a system (they do not depend on the drain
concurrency). Ratios are written so that above 1 is better for us: ours/peer for rates,
peer/ours for latency and memory.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
OURS = "async-jobs"
PEER = "pgqueuer"
OURS_DSN = "postgresql://postgres@127.0.0.1:5432/async_jobs_bench"
PEER_DSN = "postgresql://postgres@127.0.0.1:5432/async_jobs_bench_pgq"


@dataclasses.dataclass(frozen=True)
class Row:
    key: str
    label: str
    unit: str
    higher_is_better: bool
    per_concurrency: bool


ROWS = (
    Row("enqueue_single_jobs_per_s", "enqueue, one call per job", "jobs/s", True, False),
    Row("enqueue_batch_jobs_per_s", "enqueue, batches of 1,000", "jobs/s", True, False),
    Row("drain_jobs_per_s", "drain, one worker process", "jobs/s", True, True),
    Row("latency_p50_ms", "enqueue-to-start p50 (conc. 10)", "ms", False, False),
    Row("latency_p95_ms", "enqueue-to-start p95 (conc. 10)", "ms", False, False),
    Row("latency_p99_ms", "enqueue-to-start p99 (conc. 10)", "ms", False, False),
    Row("worker_peak_rss_mb", "worker peak RSS (VmHWM), drain", "MB", False, True),
)

# (name, row key, drain concurrency or None, kind, threshold); kind "ratio" compares the
# ratio (better-is-above-1 form), "ours_below" compares our absolute median.
TARGETS = (
    # Issue 21's targets, at defaults (the drain's are against the fastest peer there).
    ("drain at concurrency 50 >= 2x PgQueuer", "drain_jobs_per_s", 50, "ratio", 2.0),
    ("drain at concurrency 10 >= 1.5x PgQueuer", "drain_jobs_per_s", 10, "ratio", 1.5),
    ("batch enqueue >= 1.3x PgQueuer", "enqueue_batch_jobs_per_s", None, "ratio", 1.3),
    ("single enqueue >= 1.2x PgQueuer", "enqueue_single_jobs_per_s", None, "ratio", 1.2),
    ("p99 latency no worse than PgQueuer", "latency_p99_ms", None, "ratio", 1.0),
    ("our worker peak RSS < 60 MB", "worker_peak_rss_mb", None, "ours_below", 60.0),
)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds (default 3)")
    parser.add_argument(
        "--concurrency",
        default="10,50",
        help="drain concurrencies, comma-separated (default 10,50)",
    )
    parser.add_argument("--jobs", type=int, default=10_000, help="jobs per scenario")
    parser.add_argument("--batch-size", type=int, default=1000)
    parser.add_argument("--latency-jobs", type=int, default=300)
    parser.add_argument("--dsn", default=OURS_DSN, help="database for our runs")
    parser.add_argument("--peer-dsn", default=PEER_DSN, help="database for PgQueuer's runs")
    parser.add_argument(
        "--no-recreate",
        dest="recreate",
        action="store_false",
        help="reuse the databases instead of creating them afresh for every run",
    )
    parser.add_argument(
        "--json",
        default=str(HERE / "results" / "compare.json"),
        help="where to write the comparison (default bench/results/compare.json)",
    )
    parser.add_argument(
        "--strict", action="store_true", help="exit with code 3 when a target is missed"
    )
    args = parser.parse_args(argv)
    try:
        args.concurrencies = [int(c) for c in args.concurrency.split(",") if c.strip()]
    except ValueError:
        parser.error("--concurrency takes comma-separated integers, e.g. 10,50")
    if not args.concurrencies or min(args.concurrencies) < 2:
        parser.error("--concurrency needs values of at least 2 (PgQueuer's minimum)")
    if args.rounds < 1:
        parser.error("--rounds must be at least 1")
    return args


# -- running ---------------------------------------------------------------------------------


def command(system: str, args: argparse.Namespace, concurrency: int, out: Path) -> list[str]:
    common = [
        "--jobs",
        str(args.jobs),
        "--concurrency",
        str(concurrency),
        "--batch-size",
        str(args.batch_size),
        "--latency-jobs",
        str(args.latency_jobs),
        "--json",
        str(out),
    ]
    if args.recreate:
        common.append("--recreate")
    if system == OURS:
        # ``python -m async_jobs`` is the ``async-jobs`` command.
        return [sys.executable, "-m", "async_jobs", "bench", "--dsn", args.dsn, *common]
    return [sys.executable, str(HERE / "pgqueuer_peer.py"), "--dsn", args.peer_dsn, *common]


def run_one(
    system: str, args: argparse.Namespace, concurrency: int, workdir: Path, index: int
) -> dict[str, Any]:
    out = workdir / f"{index:02d}-{system}-c{concurrency}.json"
    argv = command(system, args, concurrency, out)
    started = time.monotonic()
    proc = subprocess.run(argv, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        sys.stderr.write(proc.stdout + proc.stderr)
        raise SystemExit(f"compare: {system} failed (exit {proc.returncode}): {' '.join(argv)}")
    result: dict[str, Any] = json.loads(out.read_text(encoding="utf-8"))
    print(
        f"  {system:<10} c={concurrency:<3} drain {result['drain_jobs_per_s']:>9,.0f}/s  "
        f"single {result['enqueue_single_jobs_per_s']:>7,.0f}/s  "
        f"batch {result['enqueue_batch_jobs_per_s']:>8,.0f}/s  "
        f"p99 {result['latency_p99_ms']:>6.2f} ms  "
        f"rss {result['worker_peak_rss_mb']:>5.1f} MB  ({time.monotonic() - started:.0f} s)",
        flush=True,
    )
    return {"system": system, "concurrency": concurrency, "result": result}


def run_all(args: argparse.Namespace, workdir: Path) -> list[dict[str, Any]]:
    runs: list[dict[str, Any]] = []
    index = 0
    for round_no in range(args.rounds):
        print(f"round {round_no + 1} of {args.rounds}", flush=True)
        for position, concurrency in enumerate(args.concurrencies):
            order = (OURS, PEER) if (round_no + position) % 2 == 0 else (PEER, OURS)
            for system in order:
                index += 1
                run = run_one(system, args, concurrency, workdir, index)
                run["round"] = round_no + 1
                runs.append(run)
    return runs


# -- summarising -----------------------------------------------------------------------------


def medians(runs: list[dict[str, Any]], concurrencies: list[int]) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    for row in ROWS:
        groups: list[int | None] = list(concurrencies) if row.per_concurrency else [None]
        for concurrency in groups:

            def values(system: str, key: str = row.key, c: int | None = concurrency) -> list[float]:
                return [
                    float(r["result"][key])
                    for r in runs
                    if r["system"] == system and (c is None or r["concurrency"] == c)
                ]

            ours, peer = values(OURS), values(PEER)
            ours_median, peer_median = statistics.median(ours), statistics.median(peer)
            if row.higher_is_better:
                ratio, kind = ours_median / peer_median, "ours/peer"
            else:
                ratio, kind = peer_median / ours_median, "peer/ours"
            rows.append(
                {
                    "metric": row.key,
                    "label": row.label,
                    "unit": row.unit,
                    "concurrency": concurrency,
                    "ours": ours_median,
                    "peer": peer_median,
                    "ratio": ratio,
                    "ratio_is": kind,
                    "samples": len(ours),
                    "ours_values": ours,
                    "peer_values": peer,
                }
            )
    return rows


def check_targets(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    checked = []
    for name, key, concurrency, kind, threshold in TARGETS:
        matching = [
            r
            for r in rows
            if r["metric"] == key and (concurrency is None or r["concurrency"] == concurrency)
        ]
        if not matching:
            checked.append({"target": name, "met": None, "value": None, "note": "not measured"})
            continue
        if kind == "ratio":
            value = min(r["ratio"] for r in matching)
            met = value >= threshold
        else:
            value = max(r["ours"] for r in matching)
            met = value < threshold
        checked.append({"target": name, "value": value, "threshold": threshold, "met": met})
    return checked


def machine(runs: list[dict[str, Any]]) -> dict[str, Any]:
    info: dict[str, Any] = {
        "nproc": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "cpu_count": os.cpu_count(),
        "cpu_model": None,
        "ram_gb": None,
        "kernel": platform.release(),
        "python": platform.python_version(),
        "postgresql": runs[0]["result"]["settings"].get("postgres_version") if runs else None,
        "async_jobs": runs[0]["result"]["settings"].get("system") if runs else None,
        "peer": next(
            (r["result"]["settings"].get("peer") for r in runs if r["system"] == PEER), None
        ),
    }
    info["git_commit"] = _git("rev-parse", "--short", "HEAD")
    info["git_dirty"] = bool(_git("status", "--porcelain", "--untracked-files=no", "src"))
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                info["cpu_model"] = line.split(":", 1)[1].strip()
                break
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                info["ram_gb"] = round(int(line.split()[1]) / 1024 / 1024, 1)
                break
    except OSError:
        pass
    return info


def _git(*args: str) -> str | None:
    try:
        proc = subprocess.run(
            ["git", *args], cwd=HERE.parent, capture_output=True, text=True, check=False
        )
    except OSError:
        return None
    return proc.stdout.strip() if proc.returncode == 0 else None


def render(rows: list[dict[str, Any]], targets: list[dict[str, Any]], info: dict[str, Any]) -> str:
    lines = [
        "",
        f"machine: {info['nproc']} CPUs ({info['cpu_model']}), {info['ram_gb']} GB RAM, "
        f"PostgreSQL {info['postgresql']}, Python {info['python']}",
        f"systems: {info['async_jobs']} (commit {info['git_commit']}"
        f"{', uncommitted changes in src' if info['git_dirty'] else ''}) vs {info['peer']}",
        "",
        f"{'metric (median)':<38} {'conc':>4} {OURS:>12} {PEER:>12} {'ratio':>7}  ratio is",
        f"{'-' * 38} {'-' * 4} {'-' * 12} {'-' * 12} {'-' * 7}  {'-' * 9}",
    ]
    for r in rows:
        conc = str(r["concurrency"]) if r["concurrency"] is not None else "-"
        label = f"{r['label']} ({r['unit']})"
        lines.append(
            f"{label:<38} {conc:>4} {r['ours']:>12,.1f} {r['peer']:>12,.1f} "
            f"{r['ratio']:>6.2f}x  {r['ratio_is']}"
        )
    lines += [
        "",
        "ratios: above 1 is better for async-jobs (rates: ours/peer; latency and memory: "
        "peer/ours)",
        "",
        "targets:",
    ]
    for t in targets:
        status = "n/a " if t["met"] is None else ("met " if t["met"] else "MISS")
        value = "" if t["value"] is None else f"  ({t['value']:.2f})"
        lines.append(f"  [{status}] {t['target']}{value}")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="async-jobs-compare-") as tmp:
        runs = run_all(args, Path(tmp))
    rows = medians(runs, args.concurrencies)
    targets = check_targets(rows)
    info = machine(runs)
    print(render(rows, targets, info), flush=True)
    report = {
        "machine": info,
        "settings": {
            "rounds": args.rounds,
            "drain_concurrencies": args.concurrencies,
            "jobs": args.jobs,
            "batch_size": args.batch_size,
            "latency_jobs": args.latency_jobs,
            "latency_interval_ms": 20,
            "latency_worker_concurrency": 10,
            "fresh_database_per_run": args.recreate,
        },
        "ratio_note": (
            "ratio above 1 is better for async-jobs: rates are ours/peer, latency and "
            "memory are peer/ours"
        ),
        "medians": rows,
        "targets": targets,
        "runs": runs,
    }
    out = Path(args.json)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    print(f"\nwritten: {out}", flush=True)
    if args.strict and any(t["met"] is False for t in targets):
        return 3
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
