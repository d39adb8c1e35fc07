"""Every kept run of ``bench/compare.py --peers-dir`` in one table: a line per run, each
target of issue 21 as the ratio that run measured against its best peer row (above 1 is
better for us), bold where the target is missed. The README's "Speed" section shows it.

    python bench/compare_runs.py                    # bench/results/compare-*.json
    python bench/compare_runs.py FILE.json ...

A run's time is when its first harness row finished; its machine, the processor the run
recorded and the machine's tag in its file name (``compare-amd5-5cecb4c.json``: ``amd5``;
the first runs have none).
"""

from __future__ import annotations

import argparse
import datetime
import json
import sys
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).resolve().parent / "results"

# The targets in the order of the table, by the first words compare.py gives each.
COLUMNS = [
    ("single enqueue", "one by one"),
    ("batch enqueue", "batches"),
    ("drain at concurrency 10", "drain c=10"),
    ("drain at concurrency 50", "drain c=50"),
    ("p99 latency", "start p99"),
    ("our worker peak RSS", "RSS, MB"),
]


def row(path: Path) -> tuple[float, str] | None:
    """(when, the markdown line) of one run's file; None for a run without the harness."""
    run = json.loads(path.read_text())
    harness = run.get("harness_runs")
    if not harness:
        return None
    when = min(h["raw"]["finished_at"] for h in harness if h.get("raw"))
    machine = run["machine"]
    cpu = "Intel Xeon" if "Intel" in machine["cpu_model"] else machine["cpu_model"]
    parts = path.stem.removeprefix("compare-").split("-")
    tag = parts[0] if len(parts) > 1 and parts[0] != machine["git_commit"] else ""
    cells = [
        datetime.datetime.fromtimestamp(when, datetime.UTC).strftime("%m-%d %H:%M"),
        f"{cpu}, {tag}" if tag else cpu,
        machine["git_commit"],
    ]
    for prefix, _ in COLUMNS:
        target = _target(run, prefix)
        if target is None or target["value"] is None:  # not measured in that run
            cells.append("")
            continue
        value = f"{target['value']:.1f}" if "RSS" in prefix else f"{target['value']:.2f}x"
        cells.append(value if target["met"] else f"**{value}**")
    return when, "| " + " | ".join(cells) + " |"


def _target(run: dict[str, Any], prefix: str) -> dict[str, Any] | None:
    for target in run["targets"]:
        if target["target"].startswith(prefix):
            return dict(target)
    return None


def table(paths: list[Path]) -> str:
    rows = sorted(r for r in map(row, paths) if r is not None)
    head = ["UTC, 2026", "machine", "main at", *(name for _, name in COLUMNS)]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    return "\n".join(lines + [line for _, line in rows])


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("files", nargs="*", type=Path)
    args = parser.parse_args(argv)
    paths = args.files or sorted(RESULTS.glob("compare-*.json"))
    if not paths:
        print(f"no compare-*.json in {RESULTS}", file=sys.stderr)
        return 2
    print(table(paths))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
