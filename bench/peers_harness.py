"""Drives the shared peers harness (compare.py's ``--peers-dir``): its rows, each run as its
``run_all.sh`` runs it, one script run per row and round, and each script's JSON read back as
runs of compare.py, one per drain concurrency.

Apart from compare.py because this is the part that knows the harness (its folder, venvs,
databases, variables and JSON); compare.py keeps the options, the medians, the targets and the
table. It does not import compare.py: compare.py builds its lineup from ``Harness.peer_names``
and ``Harness.pgqueuer_names`` and hands ``run_harness`` the function that formats a progress
line.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import subprocess
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

PROJECT = Path(__file__).resolve().parent.parent  # this checkout, installed into the venv


@dataclasses.dataclass(frozen=True)
class HarnessRow:
    """One row of the shared peers harness, run as its run_all.sh runs it."""

    name: str  # the row's name in the harness, also the "peer" its JSON reports
    library: str
    script: str
    database: str
    env: tuple[tuple[str, str], ...] = ()
    python312: bool = False  # oban 0.7 needs Python >= 3.12: the second venv


HARNESS_OURS = "asyncjobs"
HARNESS_ROWS = (
    # Ours as shipped: the worker on uvloop, as the async-jobs CLI runs it.
    HarnessRow("asyncjobs", "async-jobs", "bench_asyncjobs.py", "bench_asyncjobs"),
    HarnessRow("pgqueuer", "pgqueuer", "bench_pgqueuer.py", "bench_pgqueuer"),
    HarnessRow(
        "pgqueuer_uvloop",
        "pgqueuer",
        "bench_pgqueuer.py",
        "bench_pgqueuer",
        env=(("PEERS_LOOP", "uvloop"),),
    ),
    HarnessRow("procrastinate", "procrastinate", "bench_procrastinate.py", "bench_procrastinate"),
    HarnessRow("oban", "oban", "bench_oban.py", "bench_oban", python312=True),
    HarnessRow(
        "oban_uvloop",
        "oban",
        "bench_oban.py",
        "bench_oban",
        env=(("PEERS_LOOP", "uvloop"),),
        python312=True,
    ),
    HarnessRow("chancy", "chancy", "bench_chancy.py", "bench_chancy"),
)
PEER_ROW_NAMES = tuple(r.name for r in HARNESS_ROWS if r.name != HARNESS_OURS)

# compare.py's row key -> where a harness JSON holds it ({c}: the drain concurrency; a
# section without it is measured once a run).
HARNESS_KEYS = {
    "enqueue_single_jobs_per_s": ("enqueue_single", "jobs_per_s"),
    "enqueue_batch_jobs_per_s": ("enqueue_batch", "jobs_per_s"),
    "drain_jobs_per_s": ("process_c{c}", "jobs_per_s"),
    "latency_p50_ms": ("latency", "p50_ms"),
    "latency_p95_ms": ("latency", "p95_ms"),
    "latency_p99_ms": ("latency", "p99_ms"),
    "worker_peak_rss_mb": ("process_c{c}", "worker_peak_rss_mb"),
}

# Variables that would turn a row into another one when inherited from the caller's shell.
ROW_SWITCHES = ("PEERS_LOOP", "PEERS_DRIVER_LOOP", "PEERS_ARQ_POLL_DELAY")
HARNESS_TIMEOUT_S = 185  # each script stops itself after 175 s; run_all.sh's second guard

# Formats one run's progress line: (row, concurrency, result, seconds, width of the row names).
ProgressLine = Callable[[str, int, dict[str, Any], float, int], str]


class HarnessError(Exception):
    """The peers harness cannot be driven as asked; the message is one line."""


@dataclasses.dataclass(frozen=True)
class Harness:
    """The harness's folder, the Pythons of its two venvs, and the rows to run."""

    folder: Path
    python: Path
    python312: Path
    rows: tuple[HarnessRow, ...]

    @property
    def peer_names(self) -> tuple[str, ...]:
        """The rows compared with ours: every row but ours."""
        return tuple(r.name for r in self.rows if r.name != HARNESS_OURS)

    @property
    def pgqueuer_names(self) -> tuple[str, ...]:
        """PgQueuer's rows, the ones enqueue is compared with."""
        return tuple(r.name for r in self.rows if r.library == "pgqueuer")

    def python_for(self, row: HarnessRow) -> Path:
        return self.python312 if row.python312 else self.python


def open_harness(args: argparse.Namespace) -> Harness:
    folder = Path(args.peers_dir).resolve()
    if not folder.is_dir():
        raise HarnessError(f"--peers-dir {args.peers_dir}: no such folder")
    rows = tuple(r for r in HARNESS_ROWS if r.name == HARNESS_OURS or r.name in args.peer_rows)
    for name in ("common.py", *dict.fromkeys(r.script for r in rows)):
        if not (folder / name).is_file():
            raise HarnessError(f"--peers-dir {args.peers_dir}: not the peers harness (no {name})")
    harness = Harness(
        folder=folder,
        python=Path(args.peers_venv or folder / ".venv") / "bin" / "python",
        python312=Path(args.peers_venv312 or folder / ".venv312") / "bin" / "python",
        rows=rows,
    )
    for row in rows:
        python = harness.python_for(row)
        if not os.access(python, os.X_OK):
            option = (
                "--peers-venv312 or PEERS_VENV312"
                if row.python312
                else "--peers-venv or PEERS_VENV"
            )
            raise HarnessError(f"no Python at {python} for row {row.name} (set {option})")
    return harness


def prepare(harness: Harness) -> str | None:
    """Create the rows' databases when missing and install this checkout into the harness's
    venv, as run_all.sh does with AJS_SRC. Returns PostgreSQL's version."""
    for database in dict.fromkeys(r.database for r in harness.rows):
        _psql(f"CREATE DATABASE {database}")  # fails, harmlessly, when it exists
    install_checkout(harness.python)
    return _psql("SHOW server_version")


def _psql(sql: str) -> str | None:
    """One statement through psql on the harness's server (its PEERS_PG_* variables and their
    defaults); None when it fails."""
    env = {**os.environ, "PGPASSWORD": os.environ.get("PEERS_PG_PASSWORD", "postgres")}
    argv = ["psql", "-qAtX", "-d", "postgres", "-c", sql]
    argv += ["-h", os.environ.get("PEERS_PG_HOST", "127.0.0.1")]
    argv += ["-p", os.environ.get("PEERS_PG_PORT", "5432")]
    argv += ["-U", os.environ.get("PEERS_PG_USER", "postgres")]
    try:
        proc = subprocess.run(
            argv, env=env, capture_output=True, text=True, check=False, timeout=30
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    return proc.stdout.strip() if proc.returncode == 0 else None


def install_checkout(python: Path) -> None:
    probe = subprocess.run(
        [str(python), "-c", "import async_jobs; print(async_jobs.__file__)"],
        capture_output=True,
        text=True,
        check=False,
    )
    installed = Path(probe.stdout.strip()).resolve() if probe.returncode == 0 else None
    if installed is not None and installed.is_relative_to(PROJECT / "src"):
        return  # an editable install of this checkout runs the code as it is now
    proc = subprocess.run(
        [str(python), "-m", "pip", "install", "-q", "-e", str(PROJECT)],
        capture_output=True,
        text=True,
        check=False,
    )
    if proc.returncode != 0:
        raise HarnessError(f"pip could not install {PROJECT}: {_last_line(proc.stderr)}")


def harness_env(row: HarnessRow, args: argparse.Namespace, results: Path) -> dict[str, str]:
    """The environment of one harness script: the sizes from our options, the row's switches,
    and nothing from the caller that changes a queue's settings (ASYNC_JOBS_*, ROW_SWITCHES)."""
    env = {
        name: value
        for name, value in os.environ.items()
        if not name.startswith("ASYNC_JOBS_") and name not in ROW_SWITCHES
    }
    env.update(
        PEERS_N=str(args.jobs),
        PEERS_BATCH=str(args.batch_size),
        PEERS_LAT_JOBS=str(args.latency_jobs),
        PEERS_CONCURRENCY=",".join(str(c) for c in args.concurrencies),
        PEERS_RESULTS=str(results),  # the worker logs; the harness folder stays untouched
        PYTHONDONTWRITEBYTECODE="1",
    )
    env.update(row.env)
    return env


def run_harness_row(
    harness: Harness, row: HarnessRow, args: argparse.Namespace, workdir: Path, round_no: int
) -> dict[str, Any]:
    """One run of a row's script: every scenario, every drain concurrency. Its output goes to
    a log beside the JSON."""
    out = workdir / f"r{round_no}-{row.name}.json"
    log = out.with_suffix(".log")
    argv = [str(harness.python_for(row)), str(harness.folder / row.script), "--out", str(out)]
    env = harness_env(row, args, workdir / "harness")
    started = time.monotonic()
    failure = raw = None
    try:
        proc = subprocess.run(
            argv,
            cwd=harness.folder,
            env=env,
            capture_output=True,
            text=True,
            check=False,
            timeout=HARNESS_TIMEOUT_S,
        )
    except subprocess.TimeoutExpired as exc:
        failure = f"no result after {HARNESS_TIMEOUT_S} s"
        log.write_bytes((exc.stdout or b"") + (exc.stderr or b""))
    else:
        log.write_text(proc.stdout + proc.stderr, encoding="utf-8")
        if proc.returncode != 0 or not out.is_file():
            failure = f"exit {proc.returncode}: {_last_line(proc.stderr)}"
        else:
            raw = json.loads(out.read_text(encoding="utf-8"))
            if raw.get("peer") != row.name:
                failure = f"the script measured {raw.get('peer')!r}, not {row.name!r}"
    return {
        "row": row.name,
        "round": round_no,
        "seconds": round(time.monotonic() - started, 1),
        "failure": failure,
        "log": str(log),
        "raw": raw,
    }


def _last_line(text: str) -> str:
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return lines[-1] if lines else "no output"


def rotation(names: Sequence[str], round_no: int) -> list[str]:
    """The order of round ``round_no`` (from 0): shifted by one row a round, so every row
    takes every position in turn."""
    shift = round_no % len(names)
    return [*names[shift:], *names[:shift]]


def from_harness(raw: dict[str, Any], concurrencies: Sequence[int]) -> dict[int, dict[str, Any]]:
    """One harness JSON as compare.py's results, one per drain concurrency. A script measures
    enqueue and latency once per run, so they go with the first concurrency only (None in the
    others) and count once in the medians. A scenario the harness reports as incomplete (``ok``
    false: a drain that did not finish, a short count in the store; latency jobs that never
    started) gives None: it measured nothing."""
    once = {key for key, (section, _) in HARNESS_KEYS.items() if "{c}" not in section}
    results: dict[int, dict[str, Any]] = {}
    for index, concurrency in enumerate(concurrencies):
        result: dict[str, Any] = {}
        for key, (section, field) in HARNESS_KEYS.items():
            part = raw.get(section.format(c=concurrency))
            value = part.get(field) if isinstance(part, dict) and _complete(part) else None
            measured = isinstance(value, int | float) and (index == 0 or key not in once)
            result[key] = float(value) if measured else None
        results[concurrency] = result
    return results


def _complete(part: dict[str, Any]) -> bool:
    return part.get("ok") is not False and part.get("started") == part.get("sent")


def harness_runs(
    record: dict[str, Any], concurrencies: Sequence[int], postgres: str | None
) -> list[dict[str, Any]]:
    """A row's run (``run_harness_row``) as runs of compare.py: one per drain concurrency,
    none when it failed."""
    raw = record["raw"]
    if record["failure"] is not None or raw is None:
        return []
    system = f"{raw['peer']} {raw.get('version')}"
    python = raw.get("env", {}).get("python")
    if python not in (None, platform.python_version()):
        system += f" (Python {python})"
    settings = {"system": system, "postgres_version": postgres}
    if raw["peer"] != HARNESS_OURS:
        settings["peer"] = system
    return [
        {
            "system": record["row"],
            "concurrency": concurrency,
            "round": record["round"],
            "result": {**result, "settings": settings},
        }
        for concurrency, result in from_harness(raw, concurrencies).items()
    ]


def run_harness(
    args: argparse.Namespace,
    harness: Harness,
    workdir: Path,
    postgres: str | None,
    progress_line: ProgressLine,
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Every round, every row once (``rotation``), a progress line as each run ends. Returns
    the runs of compare.py and the record of every script run, the failed ones among them."""
    runs: list[dict[str, Any]] = []
    records: list[dict[str, Any]] = []
    rows = {r.name: r for r in harness.rows}
    width = max(len(name) for name in rows)
    for round_no in range(args.rounds):
        print(f"round {round_no + 1} of {args.rounds}", flush=True)
        for name in rotation(list(rows), round_no):
            record = run_harness_row(harness, rows[name], args, workdir, round_no + 1)
            records.append(record)
            if record["failure"] is not None:
                failed = f"FAILED ({record['failure']}); log: {record['log']}"
                print(f"  {name:<{width}} {failed}", flush=True)
            for run in harness_runs(record, args.concurrencies, postgres):
                line = progress_line(
                    name, run["concurrency"], run["result"], record["seconds"], width
                )
                print(line, flush=True)
                runs.append(run)
    return runs, records


def harness_notes(harness: Harness) -> tuple[str, ...]:
    """What the rows are: the second rows and the libraries the harness has only one row of."""
    libraries: dict[str, list[HarnessRow]] = {}
    for row in harness.rows:
        if row.name != HARNESS_OURS:
            libraries.setdefault(row.library, []).append(row)
    second = [
        f"{r.name} ({' '.join(f'{k}={v}' for k, v in r.env)})"
        for rows in libraries.values()
        if len(rows) > 1
        for r in rows
        if r.env
    ]
    single = [library for library, rows in libraries.items() if len(rows) == 1]
    notes = []
    if second:
        notes.append(f"second rows, as each library's own CLI runs: {', '.join(second)}")
    if single:
        notes.append(
            f"{', '.join(single)}: no second row in the harness, one row each at defaults "
            "(the harness's README says what a row changes)"
        )
    return tuple(notes)
