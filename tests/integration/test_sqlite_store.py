"""What only the SQLite store has to get right: WAL, one writer shared by several
connections, migrations, REAL timestamps and the errors of a missing file or schema.

The behaviour every store shares is checked by the store conformance suite.
"""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path

import pytest

from async_jobs.domain import jobs as jobs_module
from async_jobs.domain.errors import SchemaMissingError, StoreError, StoreUnavailableError
from async_jobs.domain.jobs import ClaimRequest, JobFilter, JobId, NewJob, time_of_id
from async_jobs.domain.scheduling import Limits
from async_jobs.domain.validation import build_new_job
from async_jobs.stores.sqlite import SqliteStore
from async_jobs.stores.sqlite.store import QUERIES

# These tests are not about limits: no use case is capped below what they claim.
UNCAPPED = Limits(default_max_concurrent=1_000_000)


def _jobs(count: int) -> list[NewJob]:
    return [build_new_job("test.job", {"n": n}) for n in range(count)]


@pytest.fixture
def db_path(tmp_path: Path) -> str:
    return str(tmp_path / "jobs.db")


@pytest.fixture
async def store(db_path: str) -> AsyncIterator[SqliteStore]:
    store = SqliteStore(db_path)
    await store.open()
    await store.migrate()
    yield store
    await store.close()


async def test_the_file_is_in_wal_mode(store: SqliteStore, db_path: str) -> None:
    with sqlite3.connect(db_path) as other:
        (mode,) = other.execute("PRAGMA journal_mode").fetchone()
    assert mode == "wal"


async def test_migrate_twice_is_a_no_op(store: SqliteStore, db_path: str) -> None:
    assert await store.migrate() == []
    second = SqliteStore(db_path)
    await second.open()
    try:
        assert await second.migrate() == []
    finally:
        await second.close()
    with sqlite3.connect(db_path) as other:
        names = other.execute("SELECT name FROM async_jobs_migrations").fetchall()
    assert names == [
        ("0001_initial",),
        ("0002_lifecycle",),
        ("0003_scheduler",),
        ("0004_webhooks",),
        ("0005_dispatch",),
        ("0006_workers",),
        ("0007_trace_context",),
        ("0009_scale_indexes",),
        ("0012_due_claim",),
        ("0013_rollup",),
        ("0015_delayed_mark",),
        ("0021_rollup_span",),
    ]


async def test_first_migrate_names_the_migrations_it_applied(db_path: str) -> None:
    store = SqliteStore(db_path)
    await store.open()
    try:
        assert await store.migrate() == [
            "0001_initial",
            "0002_lifecycle",
            "0003_scheduler",
            "0004_webhooks",
            "0005_dispatch",
            "0006_workers",
            "0007_trace_context",
            "0009_scale_indexes",
            "0012_due_claim",
            "0013_rollup",
            "0015_delayed_mark",
            "0021_rollup_span",
        ]
    finally:
        await store.close()


async def test_two_stores_on_one_file_never_claim_the_same_job(
    store: SqliteStore, db_path: str
) -> None:
    inserted = {job.id for job, _ in await store.insert_jobs(_jobs(300))}
    other = SqliteStore(db_path)
    await other.open()

    async def drain(claimer: SqliteStore, worker: str) -> list[JobId]:
        claimed: list[JobId] = []
        while batch := await claimer.claim_jobs(ClaimRequest(worker, 7, 30.0, limits=UNCAPPED)):
            claimed.extend(job.id for job in batch)
        return claimed

    try:
        results = await asyncio.gather(
            drain(store, "a1"), drain(store, "a2"), drain(other, "b1"), drain(other, "b2")
        )
    finally:
        await other.close()
    claimed = [job_id for result in results for job_id in result]
    assert len(claimed) == len(set(claimed))
    assert set(claimed) == inserted


async def test_a_file_locked_too_long_makes_the_store_unavailable(db_path: str) -> None:
    store = SqliteStore(
        db_path, busy_timeout_seconds=0.01, lock_retries=2, retry_pause_seconds=0.001
    )
    await store.open()
    await store.migrate()
    holder = sqlite3.connect(db_path, isolation_level=None)
    try:
        holder.execute("BEGIN IMMEDIATE")
        with pytest.raises(StoreUnavailableError):
            await store.claim_jobs(ClaimRequest("w", 1, 30.0))
        holder.execute("ROLLBACK")
        assert await store.claim_jobs(ClaimRequest("w", 1, 30.0)) == []
    finally:
        holder.close()
        await store.close()


async def test_a_cancelled_write_leaves_no_transaction_open(
    store: SqliteStore, db_path: str
) -> None:
    await store.insert_jobs(_jobs(20))
    for ticks in range(12):
        task = asyncio.create_task(store.claim_jobs(ClaimRequest("w", 1, 30.0)))
        for _ in range(ticks):
            await asyncio.sleep(0)  # wait-ok: a bare yield to the loop; no time passes
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):  # it may have finished first
            await task
    other = SqliteStore(db_path, busy_timeout_seconds=0.5, lock_retries=0)
    await other.open()
    try:
        assert len(await other.claim_jobs(ClaimRequest("w", 100, 30.0))) <= 20
    finally:
        await other.close()
    assert len(await store.insert_jobs(_jobs(1))) == 1


async def test_pages_split_a_batch_created_in_the_same_millisecond(
    store: SqliteStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    # created_at is the id's time: the clock stands still (at the start of a millisecond)
    # while the jobs are made, so that their ids, each the last one's next, share that
    # millisecond, as this store keeps it. undo() puts the clock and its last id back.
    now = time.time_ns() // 1_000_000 * 1_000_000
    monkeypatch.setattr(jobs_module, "_last_clock", 0)
    monkeypatch.setattr(jobs_module, "_time_ns", lambda: now)
    jobs = _jobs(25)
    monkeypatch.undo()
    created = [job for job, _ in await store.insert_jobs(jobs)]
    assert len({job.created_at for job in created}) == 1
    expected = sorted((job.id for job in created), reverse=True)
    seen: list[JobId] = []
    cursor = None
    while True:
        page = await store.list_jobs(JobFilter(tenant_id="default"), 4, cursor)
        seen.extend(job.id for job in page.items)
        if page.next_cursor is None:
            break
        cursor = page.next_cursor
    assert seen == expected


async def test_a_job_made_at_a_whole_millisecond_keeps_that_millisecond(
    store: SqliteStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """created_at is exactly the millisecond of the id, whichever part of a second it is
    (this store keeps whole milliseconds)."""
    made = []
    for millis in (1_796_627_123_000, 1_796_627_123_123, 1_796_627_123_999):
        monkeypatch.setattr(jobs_module, "_last_clock", 0)
        monkeypatch.setattr(jobs_module, "_time_ns", lambda m=millis: m * 1_000_000)
        made.append((millis, _jobs(1)[0]))
        monkeypatch.undo()
    for millis, new in made:
        job, _ = await store.insert_job(new)
        assert job.created_at == time_of_id(job.id) == datetime.fromtimestamp(millis / 1000, UTC)
        assert await store.get_job(job.id) == job


async def test_times_survive_the_round_trip_through_real_seconds(store: SqliteStore) -> None:
    job, _ = await store.insert_job(build_new_job("test.job", delay=1.5))
    stored = await store.get_job(job.id)
    assert stored == job
    assert job.created_at.tzinfo is not None
    assert job.created_at.microsecond % 1000 == 0
    # created_at is when the job was made (its id's millisecond), run_at the store's clock at
    # the insert plus the delay: a little more than the delay apart.
    assert 1.5 <= (job.run_at - job.created_at).total_seconds() < 1.6


async def test_a_missing_directory_makes_the_store_unavailable(tmp_path: Path) -> None:
    store = SqliteStore(str(tmp_path / "no" / "such" / "dir" / "jobs.db"))
    with pytest.raises(StoreUnavailableError):
        await store.open()


async def test_a_file_that_is_not_a_database_makes_the_store_unavailable(
    tmp_path: Path,
) -> None:
    path = tmp_path / "not.db"
    path.write_bytes(b"this is not a database file, not at all" * 100)
    with pytest.raises(StoreUnavailableError):
        await SqliteStore(str(path)).open()


async def test_an_unmigrated_file_reports_the_missing_schema(db_path: str) -> None:
    fresh = SqliteStore(db_path)
    await fresh.open()
    await fresh.close()  # the file now exists, without tables
    store = SqliteStore(db_path)
    await store.open()
    try:
        with pytest.raises(SchemaMissingError, match="async-jobs migrate"):
            await store.get_job(build_new_job("test.job").id)
        with pytest.raises(SchemaMissingError):
            await store.insert_jobs(_jobs(2))
        with pytest.raises(SchemaMissingError):
            await store.claim_jobs(ClaimRequest("w", 1, 30.0))
        await store.ping()
    finally:
        await store.close()


async def test_a_store_that_is_not_open_refuses_work(db_path: str) -> None:
    store = SqliteStore(db_path)
    with pytest.raises(StoreError, match="not open"):
        await store.ping()
    await store.open()
    await store.close()
    with pytest.raises(StoreError, match="not open"):
        await store.get_job(build_new_job("test.job").id)


async def test_jobs_written_for_the_future_are_marked_and_the_claims_walk_skips_them(
    store: SqliteStore, db_path: str
) -> None:
    """0015: an enqueue with a delay marks the job; the walk of claim_groups reads the index
    of unmarked pending rows, so the marked tenants are never visited."""
    later = [build_new_job("test.job", {}, tenant_id=f"b{n}", delay=3600) for n in range(20)]
    await store.insert_jobs([*later, build_new_job("test.job", {}, tenant_id="due")])
    with contextlib.closing(sqlite3.connect(db_path)) as conn:
        marked = conn.execute("SELECT tenant_id FROM async_jobs WHERE delayed = 1").fetchall()
        params = {"use_cases": "[]", "now": 0.0}
        plan = conn.execute("EXPLAIN QUERY PLAN " + QUERIES["claim_groups"], params).fetchall()
    assert sorted(t for (t,) in marked) == sorted(j.tenant_id for j in later)
    pair_probes = [r[3] for r in plan if "SEARCH a USING" in r[3] and "tenant_id" in r[3]]
    assert pair_probes and all("async_jobs_pending_ready" in p for p in pair_probes), plan
    claimed = await store.claim_jobs(ClaimRequest("w1", 50, 30, limits=UNCAPPED))
    assert [j.tenant_id for j in claimed] == ["due"]
