"""Our queue against its peers on this machine: every benchmark, several interleaved rounds,
medians, and the ratios.

    python bench/compare.py                       # 3 rounds, drains at concurrency 10 and 50
    python bench/compare.py --rounds 5 --jobs 20000
    python bench/compare.py --peers-dir ../shared/peers --peers-venv /work/peers-venv \
        --peers-venv312 /work/peers-venv312       # every peer of issue 21, through the harness

Without ``--peers-dir`` (or ``PEERS_DIR``) each round runs, for every drain concurrency,
``python -m async_jobs bench`` (the ``async-jobs bench`` command) and
``bench/pgqueuer_peer.py`` one after the other, the order alternating so neither always runs
on a warmer machine. Every run starts from a freshly created database (``--recreate``) of its
own.

With ``--peers-dir`` the shared peers harness measures every queue, ours included, with its
own scripts (``bench_<name>.py --out FILE``, one run covers every scenario and drain
concurrency), so each queue is timed the same way: from its worker's ready signal to the last
finished job as the store shows it. ``HARNESS_ROWS`` says how each row is run (the harness's
``run_all.sh`` does the same); each round runs every row once, the order rotating by one row a
round. The driver of the harness is bench/peers_harness.py; nothing of the harness is copied.

Medians: the drain rate and the worker's peak RSS per drain concurrency; enqueue rates and
latency percentiles over every run of a system (they do not depend on the drain
concurrency). Ratios are written so that above 1 is better for us: ours/peer for rates,
peer/ours for latency and memory. With several peer rows, each metric is compared with the
best of the rows ``Row.against`` names: PgQueuer's rows for enqueue, every peer row for the
rest.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:  # loaded from its path (the tests), not run as a script
    sys.path.insert(0, str(HERE))

from peers_harness import (  # noqa: E402
    HARNESS_OURS,
    PEER_ROW_NAMES,
    Harness,
    HarnessError,
    harness_notes,
    open_harness,
    prepare,
    run_harness,
)

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
    # The peer rows a median is compared with, the best of them: "pgqueuer" (PgQueuer's rows)
    # or "peers" (every peer row). Against bench/pgqueuer_peer.py both are that one peer.
    against: str = "peers"

    def against_text(self) -> str:
        if self.against == "pgqueuer":
            return "PgQueuer's best row"
        return "the fastest peer row" if self.higher_is_better else "the best peer row"


ROWS = (
    Row(
        "enqueue_single_jobs_per_s",
        "enqueue, one call per job",
        "jobs/s",
        True,
        False,
        against="pgqueuer",
    ),
    Row(
        "enqueue_batch_jobs_per_s",
        "enqueue, batches of 1,000",
        "jobs/s",
        True,
        False,
        against="pgqueuer",
    ),
    Row("drain_jobs_per_s", "drain, one worker process", "jobs/s", True, True),
    Row("latency_p50_ms", "enqueue-to-start p50 (conc. 10)", "ms", False, False),
    Row("latency_p95_ms", "enqueue-to-start p95 (conc. 10)", "ms", False, False),
    Row("latency_p99_ms", "enqueue-to-start p99 (conc. 10)", "ms", False, False),
    Row("worker_peak_rss_mb", "worker peak RSS (VmHWM), drain", "MB", False, True),
)

# (name, row key, drain concurrency or None, kind, threshold); kind "ratio" compares the
# ratio (better-is-above-1 form) with the row's comparator, which the name gives at {peer};
# "ours_below" compares our absolute median.
TARGETS = (
    # Issue 21's targets, every queue at its defaults, same run.
    ("drain at concurrency 50 >= 2x {peer}", "drain_jobs_per_s", 50, "ratio", 2.0),
    ("drain at concurrency 10 >= 1.5x {peer}", "drain_jobs_per_s", 10, "ratio", 1.5),
    ("batch enqueue >= 1.3x {peer}", "enqueue_batch_jobs_per_s", None, "ratio", 1.3),
    ("single enqueue >= 1.2x {peer}", "enqueue_single_jobs_per_s", None, "ratio", 1.2),
    ("p99 latency no worse than {peer}", "latency_p99_ms", None, "ratio", 1.0),
    ("our worker peak RSS < 60 MB", "worker_peak_rss_mb", None, "ours_below", 60.0),
)


@dataclasses.dataclass(frozen=True)
class Lineup:
    """Whose runs are ours, and which peer rows a metric is compared with."""

    ours: str
    peers: tuple[str, ...]
    pgqueuer: tuple[str, ...]  # PgQueuer's rows among the peers
    label: str | None = None  # a single peer's name in the target lines; None: name the row

    @property
    def systems(self) -> tuple[str, ...]:
        return (self.ours, *self.peers)

    def candidates(self, row: Row) -> tuple[str, ...]:
        return self.pgqueuer if row.against == "pgqueuer" else self.peers

    def comparator(self, against: str, peer_row: str | None) -> str:
        """How a target line names the peer it was checked against."""
        if self.label is not None:
            return self.label
        return f"{against} ({peer_row or 'none measured'})"


PGQUEUER_ONLY = Lineup(OURS, (PEER,), (PEER,), label="PgQueuer")


def harness_lineup(harness: Harness) -> Lineup:
    """Ours against the harness's peer rows; enqueue against PgQueuer's rows among them."""
    return Lineup(HARNESS_OURS, harness.peer_names, harness.pgqueuer_names)


@dataclasses.dataclass(frozen=True)
class Measured:
    """The runs of one comparison and what they were compared as."""

    runs: list[dict[str, Any]]
    lineup: Lineup
    settings: dict[str, Any]
    notes: tuple[str, ...] = ()
    harness_runs: list[dict[str, Any]] | None = None


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds (default 3)")
    parser.add_argument(
        "--concurrency",
        help="drain concurrencies, comma-separated (default 10,50; with --peers-dir "
        "PEERS_CONCURRENCY when set)",
    )
    parser.add_argument(
        "--jobs", type=int, help="jobs per scenario (default 10000; with --peers-dir PEERS_N)"
    )
    parser.add_argument("--batch-size", type=int, help="default 1000 (PEERS_BATCH)")
    parser.add_argument("--latency-jobs", type=int, help="default 300 (PEERS_LAT_JOBS)")
    parser.add_argument("--dsn", default=OURS_DSN, help="database for our runs")
    parser.add_argument("--peer-dsn", default=PEER_DSN, help="database for PgQueuer's runs")
    parser.add_argument(
        "--no-recreate",
        dest="recreate",
        action="store_false",
        help="reuse the databases instead of creating them afresh for every run",
    )
    parser.add_argument(
        "--peers-dir",
        default=os.environ.get("PEERS_DIR") or None,
        help="the shared peers harness (PEERS_DIR): measure ours and every peer row with its "
        "scripts instead of ours against bench/pgqueuer_peer.py",
    )
    parser.add_argument(
        "--peers-venv",
        default=os.environ.get("PEERS_VENV") or None,
        help="venv with the harness's requirements (PEERS_VENV; default PEERS_DIR/.venv); "
        "this checkout is installed into it",
    )
    parser.add_argument(
        "--peers-venv312",
        default=os.environ.get("PEERS_VENV312") or None,
        help="Python 3.12 venv for the oban rows (PEERS_VENV312; default PEERS_DIR/.venv312)",
    )
    parser.add_argument(
        "--peer-rows",
        default=",".join(PEER_ROW_NAMES),
        help=f"harness rows to compare with (default all: {','.join(PEER_ROW_NAMES)})",
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
    _resolve_sizes(parser, args)
    args.peer_rows = [name for name in args.peer_rows.split(",") if name.strip()]
    unknown = sorted(set(args.peer_rows) - set(PEER_ROW_NAMES))
    if unknown:
        parser.error(f"--peer-rows: unknown {','.join(unknown)}; known: {','.join(PEER_ROW_NAMES)}")
    if args.rounds < 1:
        parser.error("--rounds must be at least 1")
    return args


def _resolve_sizes(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """An option, else (through the harness) the PEERS_* variable its scripts read, else the
    default. The harness's scripts then get the values from here, so both agree."""
    harness = args.peers_dir is not None

    def pick(value: Any, variable: str, default: str) -> str:
        if value is not None:
            return str(value)
        return (os.environ.get(variable) if harness else None) or default

    try:
        args.jobs = int(pick(args.jobs, "PEERS_N", "10000"))
        args.batch_size = int(pick(args.batch_size, "PEERS_BATCH", "1000"))
        args.latency_jobs = int(pick(args.latency_jobs, "PEERS_LAT_JOBS", "300"))
    except ValueError:
        parser.error("PEERS_N, PEERS_BATCH and PEERS_LAT_JOBS take integers")
    args.concurrency = concurrency = pick(args.concurrency, "PEERS_CONCURRENCY", "10,50")
    try:
        args.concurrencies = [int(c) for c in concurrency.split(",") if c.strip()]
    except ValueError:
        parser.error("--concurrency takes comma-separated integers, e.g. 10,50")
    if not args.concurrencies or min(args.concurrencies) < 2:
        parser.error("--concurrency needs values of at least 2 (PgQueuer's minimum)")


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


# The progress line's fields: (label, row key, width, format, unit).
PROGRESS = (
    ("single", "enqueue_single_jobs_per_s", 7, ",.0f", "/s"),
    ("batch", "enqueue_batch_jobs_per_s", 8, ",.0f", "/s"),
    ("p99", "latency_p99_ms", 6, ".2f", " ms"),
    ("rss", "worker_peak_rss_mb", 5, ".1f", " MB"),
)


def progress_line(
    system: str, concurrency: int, result: dict[str, Any], seconds: float, width: int = 10
) -> str:
    """One run's figures as it ends. The drain always shows; another figure the run has not
    (a harness run measures enqueue and latency with its first concurrency) is left out."""
    fields = [f"drain {_fmt(result['drain_jobs_per_s'], 9, ',.0f')}/s"]
    fields += [
        f"{label} {_fmt(result[key], size, spec)}{unit}"
        for label, key, size, spec, unit in PROGRESS
        if result[key] is not None
    ]
    return f"  {system:<{width}} c={concurrency:<3} {'  '.join(fields)}  ({seconds:.0f} s)"


def _fmt(value: float | None, width: int, spec: str) -> str:
    return f"{'n/a':>{width}}" if value is None else f"{value:>{width}{spec}}"


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
    print(progress_line(system, concurrency, result, time.monotonic() - started), flush=True)
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


def measure_against_pgqueuer(args: argparse.Namespace) -> Measured:
    with tempfile.TemporaryDirectory(prefix="async-jobs-compare-") as tmp:
        runs = run_all(args, Path(tmp))
    return Measured(runs, PGQUEUER_ONLY, sizes(args, 20, fresh_databases=args.recreate))


def sizes(args: argparse.Namespace, interval_ms: float, fresh_databases: bool) -> dict[str, Any]:
    """The settings every comparison reports: rounds, sizes, the latency scenario's pacing."""
    return {
        "rounds": args.rounds,
        "drain_concurrencies": args.concurrencies,
        "jobs": args.jobs,
        "batch_size": args.batch_size,
        "latency_jobs": args.latency_jobs,
        "latency_interval_ms": interval_ms,
        "latency_worker_concurrency": 10,
        "fresh_database_per_run": fresh_databases,
    }


# -- running through the harness -------------------------------------------------------------


def measure_with_harness(args: argparse.Namespace) -> Measured:
    harness = open_harness(args)
    postgres = prepare(harness)
    workdir = Path(tempfile.mkdtemp(prefix="async-jobs-compare-"))
    runs, records = run_harness(args, harness, workdir, postgres, progress_line)
    notes = harness_notes(harness)
    if any(r["failure"] is not None for r in records):
        notes += (f"the logs of every run, the failed ones among them, are kept in {workdir}",)
    else:
        shutil.rmtree(workdir)
    interval_ms = float(os.environ.get("PEERS_LAT_INTERVAL", "0.02")) * 1000
    # Not fresh databases: each script empties its tables before a scenario.
    settings = {
        **sizes(args, interval_ms, fresh_databases=False),
        "harness": {
            "folder": str(harness.folder),
            "python": str(harness.python),
            "python312": str(harness.python312),
            "rows": [dataclasses.asdict(r) for r in harness.rows],
            "order": "every row once a round, the order rotating by one row a round",
        },
    }
    return Measured(runs, harness_lineup(harness), settings, notes, records)


# -- summarising -----------------------------------------------------------------------------


def medians(
    runs: list[dict[str, Any]], concurrencies: list[int], lineup: Lineup = PGQUEUER_ONLY
) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    for row in ROWS:
        groups: list[int | None] = list(concurrencies) if row.per_concurrency else [None]
        for concurrency in groups:
            stats = {s: spread(_values(runs, s, row.key, concurrency)) for s in lineup.systems}
            rows.append(_compared(row, concurrency, stats, lineup))
    return rows


def _values(
    runs: list[dict[str, Any]], system: str, key: str, concurrency: int | None
) -> list[float]:
    return [
        float(r["result"][key])
        for r in runs
        if r["system"] == system
        and (concurrency is None or r["concurrency"] == concurrency)
        and r["result"].get(key) is not None
    ]


def spread(values: list[float]) -> dict[str, Any] | None:
    """Median and range of one system's samples; None without samples."""
    if not values:
        return None
    return {
        "median": statistics.median(values),
        "min": min(values),
        "max": max(values),
        "values": values,
    }


def best_peer(
    stats: dict[str, dict[str, Any] | None], candidates: Sequence[str], higher_is_better: bool
) -> str | None:
    """The candidate with the best median (the first one on a tie); None if none measured."""
    measured = [s for s in candidates if stats.get(s) is not None]
    if not measured:
        return None
    pick = max if higher_is_better else min
    return pick(measured, key=lambda s: stats[s]["median"])


def _compared(
    row: Row,
    concurrency: int | None,
    stats: dict[str, dict[str, Any] | None],
    lineup: Lineup,
) -> dict[str, Any]:
    peer = best_peer(stats, lineup.candidates(row), row.higher_is_better)
    ours, theirs = stats[lineup.ours], stats[peer] if peer is not None else None
    ours_median = ours["median"] if ours else None
    peer_median = theirs["median"] if theirs else None
    ratio = None
    if ours_median and peer_median:
        ratio = ours_median / peer_median if row.higher_is_better else peer_median / ours_median
    return {
        "metric": row.key,
        "label": row.label,
        "unit": row.unit,
        "concurrency": concurrency,
        "ours": ours_median,
        "peer": peer_median,
        "ratio": ratio,
        "ratio_is": "ours/peer" if row.higher_is_better else "peer/ours",
        "samples": len(ours["values"]) if ours else 0,
        "ours_values": ours["values"] if ours else [],
        "peer_values": theirs["values"] if theirs else [],
        "peer_row": peer,
        "against": row.against_text(),
        "per_row": stats,
    }


def check_targets(
    rows: list[dict[str, Any]], lineup: Lineup = PGQUEUER_ONLY
) -> list[dict[str, Any]]:
    checked = []
    for name, key, concurrency, kind, threshold in TARGETS:
        matching = [
            r
            for r in rows
            if r["metric"] == key and (concurrency is None or r["concurrency"] == concurrency)
        ]
        if kind == "ratio":
            checked.append(_ratio_target(name, key, matching, threshold, lineup))
            continue
        measured = [r["ours"] for r in matching if r["ours"] is not None]
        if not measured:
            checked.append({"target": name, "met": None, "value": None, "note": "not measured"})
            continue
        value = max(measured)
        checked.append(
            {"target": name, "value": value, "threshold": threshold, "met": value < threshold}
        )
    return checked


def _ratio_target(
    name: str, key: str, matching: list[dict[str, Any]], threshold: float, lineup: Lineup
) -> dict[str, Any]:
    """The lowest ratio of the matching medians against ``threshold``; the line names the
    peer row it was measured against."""
    (row,) = [r for r in ROWS if r.key == key]
    worst = min(
        (r for r in matching if r["ratio"] is not None), key=lambda r: r["ratio"], default=None
    )
    if worst is None:
        target = name.format(peer=lineup.comparator(row.against_text(), None))
        return {
            "target": target,
            "against": None,
            "met": None,
            "value": None,
            "note": "not measured",
        }
    return {
        "target": name.format(peer=lineup.comparator(worst["against"], worst["peer_row"])),
        "against": worst["peer_row"],
        "value": worst["ratio"],
        "threshold": threshold,
        "met": worst["ratio"] >= threshold,
    }


def machine(runs: list[dict[str, Any]], lineup: Lineup = PGQUEUER_ONLY) -> dict[str, Any]:
    ours = next((r for r in runs if r["system"] == lineup.ours), runs[0] if runs else None)
    settings = ours["result"]["settings"] if ours else {}
    peers = [r["result"]["settings"].get("peer") for r in runs if r["system"] in lineup.peers]
    info: dict[str, Any] = {
        "nproc": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "cpu_count": os.cpu_count(),
        "cpu_model": None,
        "ram_gb": None,
        "kernel": platform.release(),
        "python": platform.python_version(),
        "postgresql": settings.get("postgres_version"),
        "async_jobs": settings.get("system"),
        "peer": ", ".join(dict.fromkeys(p for p in peers if p)) or None,
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


def render(
    rows: list[dict[str, Any]],
    targets: list[dict[str, Any]],
    info: dict[str, Any],
    lineup: Lineup = PGQUEUER_ONLY,
    notes: Sequence[str] = (),
) -> str:
    # Several peer rows: each line names the one its median is compared with.
    named = lineup.label is None
    peer_head = "best peer" if named else lineup.peers[0]
    lines = [
        "",
        f"machine: {info['nproc']} CPUs ({info['cpu_model']}), {info['ram_gb']} GB RAM, "
        f"PostgreSQL {info['postgresql']}, Python {info['python']}",
        f"systems: {info['async_jobs']} (commit {info['git_commit']}"
        f"{', uncommitted changes in src' if info['git_dirty'] else ''}) vs {info['peer']}",
        "",
        f"{'metric (median)':<38} {'conc':>4} {lineup.ours:>12} {peer_head:>12} {'ratio':>7}  "
        f"ratio is{'   peer row' if named else ''}",
        f"{'-' * 38} {'-' * 4} {'-' * 12} {'-' * 12} {'-' * 7}  {'-' * 9}"
        f"{'  ' + '-' * 15 if named else ''}",
    ]
    for r in rows:
        conc = str(r["concurrency"]) if r["concurrency"] is not None else "-"
        label = f"{r['label']} ({r['unit']})"
        ratio = f"{r['ratio']:>6.2f}x" if r["ratio"] is not None else f"{'n/a':>7}"
        lines.append(
            f"{label:<38} {conc:>4} {_fmt(r['ours'], 12, ',.1f')} {_fmt(r['peer'], 12, ',.1f')} "
            f"{ratio}  {r['ratio_is']}{'  ' + (r['peer_row'] or '-') if named else ''}"
        )
    lines += [
        "",
        "ratios: above 1 is better for async-jobs (rates: ours/peer; latency and memory: "
        "peer/ours)",
    ]
    if named:
        lines += [
            "peer: the best median of PgQueuer's rows for enqueue, of every peer row otherwise",
            *render_spreads(rows, lineup),
            *(f"note: {note}" for note in notes),
        ]
    lines += ["", "targets:"]
    for t in targets:
        status = "n/a " if t["met"] is None else ("met " if t["met"] else "MISS")
        value = "" if t["value"] is None else f"  ({t['value']:.2f})"
        lines.append(f"  [{status}] {t['target']}{value}")
    return "\n".join(lines)


def render_spreads(rows: list[dict[str, Any]], lineup: Lineup) -> list[str]:
    """Every row's median and range, metric by metric; * marks the peer row compared with."""
    width = max(len(s) for s in lineup.systems) + 2
    lines = ["", f"{'per row':<{width + 2}} {'median':>12} {'min':>12} {'max':>12}  runs"]
    for r in rows:
        conc = f", concurrency {r['concurrency']}" if r["concurrency"] is not None else ""
        lines.append(f"{r['label']} ({r['unit']}){conc}")
        for system in lineup.systems:
            s = r["per_row"].get(system)
            mark = "*" if system == r["peer_row"] else " "
            if s is None:
                lines.append(f"{mark} {system:<{width}} {'n/a':>12}")
                continue
            lines.append(
                f"{mark} {system:<{width}} {s['median']:>12,.1f} {s['min']:>12,.1f} "
                f"{s['max']:>12,.1f}  {len(s['values']):>4}"
            )
    return lines


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        if args.peers_dir is None:
            measured = measure_against_pgqueuer(args)
        else:
            measured = measure_with_harness(args)
    except HarnessError as exc:
        sys.stderr.write(f"compare: {exc}\n")
        return 2
    lineup = measured.lineup
    rows = medians(measured.runs, args.concurrencies, lineup)
    targets = check_targets(rows, lineup)
    info = machine(measured.runs, lineup)
    print(render(rows, targets, info, lineup, measured.notes), flush=True)
    report: dict[str, Any] = {
        "machine": info,
        "settings": measured.settings,
        "ratio_note": (
            "ratio above 1 is better for async-jobs: rates are ours/peer, latency and "
            "memory are peer/ours"
        ),
        "medians": rows,
        "targets": targets,
        "runs": measured.runs,
    }
    failed = []
    if measured.harness_runs is not None:
        failed = [r for r in measured.harness_runs if r["failure"] is not None]
        report["notes"] = list(measured.notes)
        report["harness_runs"] = measured.harness_runs
    out = Path(args.json)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    print(f"\nwritten: {out}", flush=True)
    if failed:
        names = ", ".join(f"{r['row']} (round {r['round']})" for r in failed)
        sys.stderr.write(f"compare: incomplete, these runs failed: {names}\n")
        return 1
    if args.strict and any(t["met"] is False for t in targets):
        return 3
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
