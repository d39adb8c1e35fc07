"""The PostgreSQL store's batches: after the first statement of a batch has told the
transaction's ``now()``, the lists with no idempotency key go by ``COPY``, their times
computed by this process as the statements compute them."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import pytest

from async_jobs.domain.jobs import NewJob, seconds
from async_jobs.stores.postgres import PostgresStore
from async_jobs.stores.postgres.inserts import _ROW_START as COPY_ROW_START
from async_jobs.stores.postgres.inserts import STATEMENT_JOBS
from tests.helpers import new_job

# Four lists: the first by a statement, the next three by COPY.
LONG_BATCH = sum(STATEMENT_JOBS) + STATEMENT_JOBS[1] + 100


@pytest.fixture
async def store(pg_database: str) -> AsyncIterator[PostgresStore]:
    store = PostgresStore(pg_database)
    await store.open()
    await store.migrate()
    try:
        yield store
    finally:
        await store.close()


@pytest.fixture
def copies(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The number of rows of each ``COPY`` the store sends (the driver still runs them)."""
    seen: list[int] = []
    real = asyncpg.connection.Connection.copy_to_table

    async def counted(self: Any, table_name: str, *, source: Any, **kw: Any) -> Any:
        data = b"".join([chunk async for chunk in source])
        seen.append(data.count(COPY_ROW_START))

        async def again() -> AsyncIterator[bytes]:
            yield data

        return await real(self, table_name, source=again(), **kw)

    monkeypatch.setattr(asyncpg.connection.Connection, "copy_to_table", counted)
    return seen


TRACE = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
AT = datetime.now(UTC).replace(microsecond=123457) + timedelta(hours=2)


def _mixed(n: int) -> NewJob:
    """Jobs that differ in what makes their times and in every column a COPY writes."""
    job = new_job(
        f"type{n % 3}",
        {"n": n, "text": 'a\\b\t"c"\nü €'},
        tenant_id=f"t{n % 5}-ü",
        use_case=("default", "reports")[n % 2],
        priority=("high", "low", "critical")[n % 3],
        max_attempts=1 + n % 4,
        delay=None if n % 11 == 0 else (0.0, 30.0, 0.1234565)[n % 3],
        run_at=AT + timedelta(microseconds=n) if n % 11 == 0 else None,
        delay_tolerance_seconds=(1.0, 2.5e-7, 3600.0)[n % 3],
        timeout_seconds=None if n % 4 else 1.5,
        webhook_url=None if n % 2 else f"https://example.test/{n}",
        backoff=None if n % 7 else {"kind": "constant", "base_seconds": n},
        expires_at=None if n % 5 else AT + timedelta(days=1, microseconds=n),
    )
    return replace(job, trace_context=TRACE)  # one enqueue call, one context


async def test_the_lists_after_the_first_go_by_copy_and_are_stored_as_returned(
    store: PostgresStore, copies: list[int]
) -> None:
    news = [_mixed(n) for n in range(LONG_BATCH)]
    results = await store.insert_jobs(iter(news))
    assert copies == [STATEMENT_JOBS[1], STATEMENT_JOBS[1], 100]
    assert [job.id for job, _ in results] == [job.id for job in news]
    for (job, created), new in zip(results, news, strict=True):
        assert created and await store.get_job(job.id) == job  # every column as returned
        assert (job.payload, job.priority, job.trace_context) == (
            new.payload,
            new.priority,
            new.trace_context,
        )
    async with store._connection() as conn:
        rows = await conn.fetch("SELECT id, delayed, run_at, deadline_at FROM async_jobs")
    # One transaction, one now(): the times of every job, whichever way it went, are those
    # the statement computes from it (the jobs with no delay have it as their run_at).
    by_id = {r["id"]: r for r in rows}
    [now] = {by_id[n.id]["run_at"] for n in news if n.run_at is None and n.delay_seconds == 0}
    for new in news:
        row = by_id[new.id]
        run_at = now + seconds(new.delay_seconds) if new.run_at is None else new.run_at
        assert row["run_at"] == run_at
        assert row["deadline_at"] == run_at + seconds(new.delay_tolerance_seconds)
        assert row["delayed"] is (run_at > now)


async def test_a_list_with_an_idempotency_key_goes_by_a_statement(
    store: PostgresStore, copies: list[int]
) -> None:
    news = [new_job(payload={"n": n}) for n in range(LONG_BATCH)]
    news[-1] = new_job(idempotency_key="k")
    news[-2] = new_job(idempotency_key="k")
    results = await store.insert_jobs(iter(news))
    assert copies == [STATEMENT_JOBS[1], STATEMENT_JOBS[1]]
    assert results[-1] == (results[-2][0], False)
    assert all(created for _, created in results[:-1])


async def test_a_batch_whose_first_statement_inserts_nothing_goes_by_statements(
    store: PostgresStore, copies: list[int]
) -> None:
    """A first list whose keys are all taken returns no row, hence no now(): no COPY."""
    first = [new_job(idempotency_key=f"k{n}") for n in range(STATEMENT_JOBS[0])]
    await store.insert_jobs(first)
    again = [new_job(idempotency_key=f"k{n}") for n in range(STATEMENT_JOBS[0])]
    results = await store.insert_jobs(again + [new_job() for _ in range(STATEMENT_JOBS[1])])
    assert copies == []
    assert [created for _, created in results].count(True) == STATEMENT_JOBS[1]


async def test_a_batch_on_a_callers_connection_goes_by_copy_too(
    store: PostgresStore, pg_database: str, copies: list[int]
) -> None:
    """Inside the caller's transaction (a savepoint), on a connection with the driver's own
    codecs: the rows and the times are the same."""
    news = [_mixed(n) for n in range(LONG_BATCH)]
    conn = await asyncpg.connect(pg_database)
    try:
        async with conn.transaction():
            results = await store.insert_jobs_in(conn, news)
    finally:
        await conn.close()
    assert copies == [STATEMENT_JOBS[1], STATEMENT_JOBS[1], 100]
    assert [job.id for job, _ in results] == [job.id for job in news]
    for job, created in results:
        assert created and await store.get_job(job.id) == job


@pytest.mark.parametrize(
    "value", [0.0, 0.1, 0.1234565, 2.5e-7, 1.5e-6, 0.0000005, 86_399.9999995, 1e9 + 0.5]
)
async def test_seconds_are_made_as_postgresql_makes_them(
    store: PostgresStore, value: float
) -> None:
    """``domain.jobs.seconds``, which every store's times come from, against
    ``make_interval``, which PostgreSQL's statements use."""
    at = datetime(2000, 1, 1, tzinfo=UTC)
    async with store._connection() as conn:
        made = await conn.fetchval("SELECT $1::timestamptz + make_interval(secs => $2)", at, value)
    assert at + seconds(value) == made
