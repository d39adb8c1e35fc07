"""`async-jobs bench` runs end to end on small numbers (the figures themselves are only
meaningful on a quiet machine at full size: bench/README.md)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.acceptance.conftest import Cli

pytestmark = [pytest.mark.postgres, pytest.mark.cpu_heavy]


def test_the_direct_benchmark_measures_every_scenario(
    cli: Cli, pg_database: str, tmp_path: Path
) -> None:
    out = tmp_path / "direct.json"
    done = cli.run(
        "bench", "--dsn", pg_database, "--jobs", "200", "--concurrency", "10",
        "--latency-jobs", "20", "--latency-interval-ms", "5", "--json", str(out),
        timeout=180,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    result = json.loads(out.read_text())
    for key in ("enqueue_single_jobs_per_s", "enqueue_batch_jobs_per_s", "drain_jobs_per_s"):
        assert result[key] > 0
    assert result["latency_p50_ms"] <= result["latency_p99_ms"]
    assert "drain, one worker process" in done.stdout
    # CPU is counted in clock ticks (10 ms): a run this short may see none of the worker's.
    assert result["latency_worker_cpu_us"] >= 0 and result["latency_postgresql_cpu_us"] >= 0
    assert "worker CPU per job, latency scenario" in done.stdout


def test_the_benchmark_runs_on_a_table_of_the_given_shape(
    cli: Cli, pg_database: str, tmp_path: Path
) -> None:
    out = tmp_path / "shaped.json"
    done = cli.run(
        "bench", "--dsn", pg_database, "--jobs", "100", "--concurrency", "10",
        "--latency-jobs", "10", "--latency-interval-ms", "5", "--json", str(out),
        "--history", "3000", "--backlog", "500", "--tenants", "7",
        timeout=180,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    result = json.loads(out.read_text())
    assert result["drain_jobs_per_s"] > 0
    assert (result["settings"]["history"], result["settings"]["tenants"]) == (3000, 7)
    after = result["details"]["sizes_after"]
    assert after["relations_mb"]["async_jobs"] > 0 and "n_tup_hot_upd" in after
    assert "async_jobs_ready" in done.stdout
    # The seeded rows stay; the measured jobs are cleared after each scenario.
    counts = _counts(pg_database)
    assert counts == {("bench_history", "succeeded"): 3000, ("bench_backlog", "pending"): 500}


def _counts(dsn: str) -> dict[tuple[str, str], int]:
    import asyncio

    import asyncpg

    async def fetch() -> dict[tuple[str, str], int]:
        conn = await asyncpg.connect(dsn)
        try:
            rows = await conn.fetch(
                "SELECT type, status::text, count(*), count(DISTINCT tenant_id) AS tenants "
                "FROM async_jobs GROUP BY 1, 2"
            )
        finally:
            await conn.close()
        assert all(r["tenants"] == 7 for r in rows)
        return {(r["type"], r["status"]): r["count"] for r in rows}

    return asyncio.run(fetch())


def test_the_sqs_benchmark_sets_the_drain_against_the_server_alone(
    cli: Cli, pg_database: str, tmp_path: Path
) -> None:
    out = tmp_path / "sqs.json"
    done = cli.run(
        "bench", "--transport", "sqs", "--dsn", pg_database, "--jobs", "60",
        "--concurrency", "5", "--rounds", "1", "--json", str(out),
        timeout=180,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    result = json.loads(out.read_text())
    assert result["sqs_raw_msgs_per_s"] > 0 and result["drain_jobs_per_s"] > 0
    assert result["drain_vs_raw"] == pytest.approx(
        result["drain_jobs_per_s"] / result["sqs_raw_msgs_per_s"]
    )
    assert result["details"]["bottleneck"]
    assert "bottleneck:" in done.stdout
    assert "moto" in result["details"]["sqs_server"]


def test_the_redis_benchmark_sets_its_drain_against_direct_in_the_same_run(
    cli: Cli, pg_database: str, tmp_path: Path
) -> None:
    out = tmp_path / "redis.json"
    done = cli.run(
        "bench", "--transport", "redis", "--dsn", pg_database, "--jobs", "60",
        "--concurrency", "5", "--rounds", "1", "--latency-jobs", "10",
        "--latency-interval-ms", "5", "--json", str(out),
        timeout=180,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    result = json.loads(out.read_text())
    assert result["drain_jobs_per_s"] > 0 and result["direct_drain_jobs_per_s"] > 0
    assert result["redis_vs_direct"] == pytest.approx(
        result["drain_jobs_per_s"] / result["direct_drain_jobs_per_s"]
    )
    assert result["latency_p50_ms"] <= result["latency_p99_ms"]
    per_job = result["details"]["cpu_ms_per_job"]
    assert set(per_job) == {"worker", "scheduler", "redis", "postgresql", "postgresql_db"}
    # The backends of the bench's own database are some of PostgreSQL's processes. CPU time
    # comes in ticks of 10 ms, more than 60 jobs may cost them: zero is a valid reading.
    assert 0 <= per_job["postgresql_db"] <= per_job["postgresql"]
    direct = result["details"]["direct_cpu_ms_per_job"]
    assert set(direct) == {"worker", "postgresql", "postgresql_db"}
    assert "redis-server started by the benchmark" in result["details"]["redis"]
    assert "CPU per job (ms):" in done.stdout
    assert "CPU per job of the direct drain (ms):" in done.stdout


def test_bad_benchmark_options_are_usage_errors(cli: Cli) -> None:
    done = cli.run("bench", "--transport", "sqs", "--window", "0")
    assert done.returncode == 2
    assert "--window must be at least 1" in done.stderr
    done = cli.run("bench", "--tenants", "0")
    assert done.returncode == 2
    assert "--tenants must be at least 1" in done.stderr
    done = cli.run("bench", "--transport", "carrier-pigeon")
    assert done.returncode == 2
    assert "not supported" in done.stderr
