"""The pure parts of bench/compare.py and of bench/peers_harness.py, its driver of the peers
harness: the harness's JSON as compare.py's rows, the order of the rounds, the peer row each
metric is compared with, and the target lines that name it. Small hand-made inputs; nothing is
run (bench/README.md gives the commands that run it)."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]


def load_compare() -> ModuleType:
    spec = importlib.util.spec_from_file_location("bench_compare", ROOT / "bench" / "compare.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up by name
    spec.loader.exec_module(module)
    return module


compare = load_compare()
peers = sys.modules["peers_harness"]  # the module compare.py imported, not a second copy


def harness_json(peer: str, drain: float, *, p99: float = 5.0, batch: Any = 40_000.0) -> dict:
    """The part of one harness script's JSON that compare.py reads, at concurrencies 10, 50."""
    return {
        "peer": peer,
        "version": "1.0",
        "env": {"python": "3.11.7"},
        "enqueue_single": {"jobs_per_s": 2000.0, "ok": True},
        "enqueue_batch": {"jobs_per_s": batch, "ok": True},
        "process_c10": {"jobs_per_s": drain / 2, "worker_peak_rss_mb": 40.0, "ok": True},
        "process_c50": {"jobs_per_s": drain, "worker_peak_rss_mb": 41.0, "ok": True},
        "latency": {"p50_ms": 3.0, "p95_ms": 4.0, "p99_ms": p99, "sent": 300, "started": 300},
    }


def run(system: str, concurrency: int, **values: float | None) -> dict[str, Any]:
    result: dict[str, Any] = {key: 1.0 for key in peers.HARNESS_KEYS}
    result.update(values)
    result["settings"] = {"system": system}
    return {"system": system, "concurrency": concurrency, "result": result}


LINEUP = compare.Lineup(
    "asyncjobs", ("pgqueuer", "pgqueuer_uvloop", "oban_uvloop"), ("pgqueuer", "pgqueuer_uvloop")
)


def test_every_row_of_the_table_has_its_place_in_the_harness_json() -> None:
    assert set(peers.HARNESS_KEYS) == {row.key for row in compare.ROWS}
    per_concurrency = {key for key, (section, _) in peers.HARNESS_KEYS.items() if "{c}" in section}
    assert per_concurrency == {row.key for row in compare.ROWS if row.per_concurrency}


def test_compare_drives_the_harness_with_the_module_beside_it() -> None:
    assert Path(peers.__file__).resolve() == ROOT / "bench" / "peers_harness.py"
    assert compare.HarnessError is peers.HarnessError


def test_a_harness_json_becomes_one_result_per_drain_concurrency() -> None:
    results = peers.from_harness(harness_json("pgqueuer", 4000.0), [10, 50])
    assert set(results) == {10, 50}
    assert results[10]["drain_jobs_per_s"] == 2000.0
    assert results[50]["drain_jobs_per_s"] == 4000.0
    assert results[50]["worker_peak_rss_mb"] == 41.0
    assert results[10]["enqueue_single_jobs_per_s"] == 2000.0
    assert results[10]["enqueue_batch_jobs_per_s"] == 40_000.0
    assert results[10]["latency_p99_ms"] == 5.0


def test_enqueue_and_latency_of_a_harness_run_count_once_in_the_medians() -> None:
    results = peers.from_harness(harness_json("pgqueuer", 4000.0), [10, 50])
    once = [row.key for row in compare.ROWS if not row.per_concurrency]
    assert all(results[10][key] is not None for key in once)
    assert all(results[50][key] is None for key in once)
    runs = []
    for round_no, rate in ((1, 1000.0), (2, 2000.0), (3, 6000.0)):
        raw = harness_json("pgqueuer", 4000.0)
        raw["enqueue_single"]["jobs_per_s"] = rate
        record = {"row": "pgqueuer", "round": round_no, "failure": None, "raw": raw}
        runs += peers.harness_runs(record, [10, 50], None)
    lineup = compare.Lineup("asyncjobs", ("pgqueuer",), ("pgqueuer",))
    rows = compare.medians(runs, [10, 50], lineup)
    (single,) = [r for r in rows if r["metric"] == "enqueue_single_jobs_per_s"]
    assert single["per_row"]["pgqueuer"]["values"] == [1000.0, 2000.0, 6000.0]


def test_scenarios_the_harness_reports_incomplete_measure_nothing() -> None:
    raw = harness_json("arq", 4000.0, batch=None)
    raw["process_c50"] = {"jobs_per_s": None, "ok": False, "worker_peak_rss_mb": 30.0}
    raw["enqueue_single"]["ok"] = False  # the store held fewer jobs than were enqueued
    raw["latency"]["started"] = 299
    results = peers.from_harness(raw, [10, 50, 100])
    assert results[10]["drain_jobs_per_s"] == 2000.0
    assert results[50]["drain_jobs_per_s"] is None
    assert results[50]["worker_peak_rss_mb"] is None
    assert results[100]["drain_jobs_per_s"] is None  # a concurrency the run did not have
    assert results[10]["enqueue_batch_jobs_per_s"] is None  # no bulk call
    assert results[10]["enqueue_single_jobs_per_s"] is None
    assert results[10]["latency_p99_ms"] is None


def test_a_row_run_gives_runs_only_when_it_succeeded() -> None:
    record = {"row": "oban_uvloop", "round": 2, "failure": None}
    record["raw"] = harness_json("oban_uvloop", 3000.0) | {"env": {"python": "3.99.0"}}
    runs = peers.harness_runs(record, [10, 50], "15.8")
    assert [(r["system"], r["concurrency"], r["round"]) for r in runs] == [
        ("oban_uvloop", 10, 2),
        ("oban_uvloop", 50, 2),
    ]
    settings = runs[0]["result"]["settings"]
    assert settings["peer"] == "oban_uvloop 1.0 (Python 3.99.0)"
    assert settings["postgres_version"] == "15.8"
    ours = {"row": "asyncjobs", "round": 1, "failure": None, "raw": harness_json("asyncjobs", 1)}
    assert "peer" not in peers.harness_runs(ours, [10], None)[0]["result"]["settings"]
    failed = {"row": "chancy", "round": 1, "failure": "exit 3: watchdog", "raw": None}
    assert peers.harness_runs(failed, [10, 50], None) == []


def test_every_row_takes_every_position_over_as_many_rounds() -> None:
    names = ["a", "b", "c"]
    assert peers.rotation(names, 0) == ["a", "b", "c"]
    assert peers.rotation(names, 1) == ["b", "c", "a"]
    assert peers.rotation(names, 3) == ["a", "b", "c"]
    for position in range(3):
        assert {peers.rotation(names, r)[position] for r in range(3)} == set(names)


def test_each_row_of_the_harness_is_run_as_run_all_sh_runs_it() -> None:
    rows = {r.name: r for r in peers.HARNESS_ROWS}
    assert rows["pgqueuer_uvloop"].script == rows["pgqueuer"].script == "bench_pgqueuer.py"
    assert dict(rows["pgqueuer_uvloop"].env) == {"PEERS_LOOP": "uvloop"}
    assert rows["oban"].python312 and rows["oban_uvloop"].python312
    assert not rows["asyncjobs"].env and not rows["chancy"].python312
    assert peers.HARNESS_OURS in rows
    for row in rows.values():  # the rows are built positionally: this pins the order
        short = row.database.removeprefix("bench_")
        assert row.script == f"bench_{short}.py"
        assert row.name.startswith(short) and short == row.library.replace("-", "")
    assert peers.PEER_ROW_NAMES == (
        "pgqueuer",
        "pgqueuer_uvloop",
        "procrastinate",
        "oban",
        "oban_uvloop",
        "chancy",
    )


def test_the_harness_env_carries_our_sizes_and_the_rows_switches_only(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("PEERS_LOOP", "uvloop")
    monkeypatch.setenv("ASYNC_JOBS_DEFAULT_MAX_CONCURRENT", "100000")
    monkeypatch.setenv("PEERS_PG_HOST", "127.0.0.1")
    monkeypatch.delenv("PEERS_CONCURRENCY", raising=False)
    args = compare.parse_args(["--peers-dir", str(tmp_path), "--jobs", "500", "--rounds", "1"])
    rows = {r.name: r for r in peers.HARNESS_ROWS}
    env = peers.harness_env(rows["pgqueuer"], args, tmp_path)
    assert "PEERS_LOOP" not in env and "ASYNC_JOBS_DEFAULT_MAX_CONCURRENT" not in env
    assert env["PEERS_PG_HOST"] == "127.0.0.1"
    assert (env["PEERS_N"], env["PEERS_CONCURRENCY"]) == ("500", "10,50")
    assert env["PEERS_RESULTS"] == str(tmp_path)
    assert peers.harness_env(rows["oban_uvloop"], args, tmp_path)["PEERS_LOOP"] == "uvloop"


def test_through_the_harness_sizes_come_from_its_variables_unless_given(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("PEERS_N", "500")
    monkeypatch.setenv("PEERS_CONCURRENCY", "10")
    monkeypatch.delenv("PEERS_DIR", raising=False)
    plain = compare.parse_args([])
    assert (plain.jobs, plain.concurrencies) == (10_000, [10, 50])
    harness = compare.parse_args(["--peers-dir", "x", "--latency-jobs", "30"])
    assert (harness.jobs, harness.concurrencies, harness.latency_jobs) == (500, [10], 30)
    assert compare.parse_args(["--peers-dir", "x", "--jobs", "700"]).jobs == 700


def test_drains_are_compared_with_the_fastest_peer_row_of_any_library() -> None:
    runs = [
        run("asyncjobs", 50, drain_jobs_per_s=9000.0),
        run("pgqueuer", 50, drain_jobs_per_s=3000.0),
        run("pgqueuer_uvloop", 50, drain_jobs_per_s=3500.0),
        run("oban_uvloop", 50, drain_jobs_per_s=4000.0),
        run("oban_uvloop", 50, drain_jobs_per_s=5000.0),
    ]
    (drain,) = [r for r in compare.medians(runs, [50], LINEUP) if r["metric"] == "drain_jobs_per_s"]
    assert drain["peer_row"] == "oban_uvloop"
    assert drain["peer"] == 4500.0
    assert drain["ratio"] == 2.0
    assert drain["per_row"]["oban_uvloop"]["min"] == 4000.0
    assert drain["per_row"]["oban_uvloop"]["max"] == 5000.0


def test_enqueue_is_compared_with_pgqueuers_best_row_even_when_another_peer_is_faster() -> None:
    runs = [
        run("asyncjobs", 10, enqueue_batch_jobs_per_s=60_000.0),
        run("pgqueuer", 10, enqueue_batch_jobs_per_s=50_000.0),
        run("pgqueuer_uvloop", 10, enqueue_batch_jobs_per_s=52_000.0),
        run("oban_uvloop", 10, enqueue_batch_jobs_per_s=90_000.0),
    ]
    rows = compare.medians(runs, [10], LINEUP)
    (batch,) = [r for r in rows if r["metric"] == "enqueue_batch_jobs_per_s"]
    assert (batch["peer_row"], batch["peer"]) == ("pgqueuer_uvloop", 52_000.0)


def test_latency_is_compared_with_the_peer_row_of_the_lowest_median() -> None:
    runs = [
        run("asyncjobs", 10, latency_p99_ms=6.0),
        run("pgqueuer", 10, latency_p99_ms=5.0),
        run("oban_uvloop", 10, latency_p99_ms=4.0),
        run("pgqueuer_uvloop", 10, latency_p99_ms=None),
    ]
    (p99,) = [r for r in compare.medians(runs, [10], LINEUP) if r["metric"] == "latency_p99_ms"]
    assert (p99["peer_row"], p99["ratio"]) == ("oban_uvloop", 4.0 / 6.0)
    assert p99["per_row"]["pgqueuer_uvloop"] is None


def test_every_target_line_names_the_row_it_was_checked_against() -> None:
    runs = [
        run("asyncjobs", 10, drain_jobs_per_s=3000.0, worker_peak_rss_mb=45.0),
        run("asyncjobs", 50, drain_jobs_per_s=8000.0, worker_peak_rss_mb=62.0),
        run("pgqueuer", 10, drain_jobs_per_s=2500.0),
        run("pgqueuer", 50, drain_jobs_per_s=3500.0),
        run("oban_uvloop", 10, drain_jobs_per_s=1000.0),
        run("oban_uvloop", 50, drain_jobs_per_s=4000.0),
    ]
    targets = compare.check_targets(compare.medians(runs, [10, 50], LINEUP), LINEUP)
    lines = {t["target"]: t for t in targets}
    drain50 = lines["drain at concurrency 50 >= 2x the fastest peer row (oban_uvloop)"]
    assert (drain50["value"], drain50["met"], drain50["against"]) == (2.0, True, "oban_uvloop")
    drain10 = lines["drain at concurrency 10 >= 1.5x the fastest peer row (pgqueuer)"]
    assert (drain10["value"], drain10["met"]) == (1.2, False)
    assert lines["batch enqueue >= 1.3x PgQueuer's best row (pgqueuer)"]["met"] is False
    assert "p99 latency no worse than the best peer row (pgqueuer)" in lines
    rss = lines["our worker peak RSS < 60 MB"]
    assert (rss["value"], rss["met"]) == (62.0, False)


def test_a_target_without_a_measured_peer_is_not_met_nor_missed() -> None:
    runs = [run("asyncjobs", 10), run("oban_uvloop", 10)]
    lineup = compare.Lineup("asyncjobs", ("oban_uvloop",), ())
    targets = compare.check_targets(compare.medians(runs, [10], lineup), lineup)
    lines = {t["target"]: t for t in targets}
    single = lines["single enqueue >= 1.2x PgQueuer's best row (none measured)"]
    assert (single["met"], single["value"]) == (None, None)
    assert (
        lines["drain at concurrency 50 >= 2x the fastest peer row (none measured)"]["met"] is None
    )


def test_against_pgqueuer_peer_alone_the_lines_read_as_before() -> None:
    runs = [run("async-jobs", 50, drain_jobs_per_s=6000.0), run("pgqueuer", 50)]
    runs[1]["result"]["drain_jobs_per_s"] = 2000.0
    targets = compare.check_targets(compare.medians(runs, [50]))
    assert targets[0]["target"] == "drain at concurrency 50 >= 2x PgQueuer"
    assert targets[0]["value"] == 3.0
    assert targets[4]["target"] == "p99 latency no worse than PgQueuer"


def test_the_notes_say_which_libraries_have_no_second_row(tmp_path: Path) -> None:
    harness = peers.Harness(tmp_path, tmp_path, tmp_path, peers.HARNESS_ROWS)
    notes = " ".join(peers.harness_notes(harness))
    assert "pgqueuer_uvloop (PEERS_LOOP=uvloop)" in notes
    assert "oban_uvloop (PEERS_LOOP=uvloop)" in notes
    assert "procrastinate, chancy: no second row in the harness" in notes
    lineup = compare.harness_lineup(harness)
    assert lineup.pgqueuer == ("pgqueuer", "pgqueuer_uvloop")
    assert lineup.ours == "asyncjobs" and "asyncjobs" not in lineup.peers


def test_a_missing_peers_folder_is_one_line_and_exit_code_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert compare.main(["--peers-dir", str(tmp_path / "nope")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "no such folder" in err
    assert compare.main(["--peers-dir", str(tmp_path)]) == 2
    assert "not the peers harness (no common.py)" in capsys.readouterr().err


def test_the_progress_line_leaves_out_what_a_run_did_not_measure() -> None:
    result = dict.fromkeys(peers.HARNESS_KEYS, None) | {"drain_jobs_per_s": 2400.0}
    line = compare.progress_line("pgqueuer_uvloop", 50, result, 6.6, width=15)
    assert line == "  pgqueuer_uvloop c=50  drain     2,400/s  (7 s)"
    result["worker_peak_rss_mb"] = 45.1
    assert "rss  45.1 MB" in compare.progress_line("asyncjobs", 50, result, 6.6)


def load_compare_runs() -> ModuleType:
    path = ROOT / "bench" / "compare_runs.py"
    spec = importlib.util.spec_from_file_location("bench_compare_runs", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_table_of_kept_runs_reads_each_target_compare_checks(tmp_path: Path) -> None:
    compare_runs = load_compare_runs()
    runs = [
        run("asyncjobs", 10, drain_jobs_per_s=3000.0, worker_peak_rss_mb=45.0),
        run("asyncjobs", 50, drain_jobs_per_s=8000.0, worker_peak_rss_mb=45.5),
        run("pgqueuer", 10, drain_jobs_per_s=2500.0),
        run("pgqueuer", 50, drain_jobs_per_s=3500.0),
    ]
    lineup = compare.Lineup("asyncjobs", ("pgqueuer",), ("pgqueuer",))
    kept = {
        "machine": {"cpu_model": "AMD EPYC", "git_commit": "abc1234"},
        "targets": compare.check_targets(compare.medians(runs, [10, 50], lineup), lineup),
        "harness_runs": [{"raw": {"finished_at": 1796688982.0}}, {"raw": None}],
    }
    path = tmp_path / "compare-amd9-abc1234.json"
    path.write_text(json.dumps(kept))
    (tmp_path / "compare-old.json").write_text(json.dumps({**kept, "harness_runs": []}))

    lines = compare_runs.table(sorted(tmp_path.glob("*.json"))).splitlines()
    assert len(lines) == 3  # the head, its rule and one run: a run without the harness is left out
    assert lines[2] == (
        "| 12-08 00:16 | AMD EPYC, amd9 | abc1234 | **1.00x** | **1.00x** | **1.20x** | 2.29x"
        " | 1.00x | 45.5 |"
    )
