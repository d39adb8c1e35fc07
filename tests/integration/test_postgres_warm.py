"""A worker's first jobs start as fast as the next ones: ``PostgresStore.warm`` prepares the
worker's statements on every connection the worker will use first, and reaches the claim's
main statement even when the table is empty (a new database, a benchmark's first run)."""

from __future__ import annotations

import asyncio
import uuid

import asyncpg
import pytest

from async_jobs.domain.errors import StoreError
from async_jobs.stores.postgres import PostgresStore
from async_jobs.stores.postgres.connection import run_worker_statements
from tests.integration.test_postgres_plans import _log_plans

# The statements this connection has prepared that call the claim (the text is put together
# so that this query does not count itself).
PREPARED_CLAIMS = (
    "SELECT count(*) FROM pg_prepared_statements"
    " WHERE strpos(statement, 'async_jobs' || '_claim(') > 0"
)


async def test_warming_on_an_empty_table_runs_the_claims_main_statement(
    pg_database: str,
) -> None:
    """PL/pgSQL plans a statement when it first runs it. On an empty table the claim for
    every use case returns before its main statement, so the warm-up also claims for a use
    case no job can have, limit 0: the main statement runs (and is planned), taking nothing."""
    conn = await asyncpg.connect(pg_database)
    plans: list[str] = []
    try:
        await _log_plans(conn, plans, analyze=False)
        await run_worker_statements(conn)
        main = [p for p in plans if "WITH active AS" in p]
        assert len(main) == 2, plans  # the claim's and the dispatch's
        assert await conn.fetchval("SELECT count(*) FROM async_jobs") == 0
    finally:
        await conn.close()


async def test_warming_reaches_the_connection_the_store_keeps(pg_database: str) -> None:
    """The store keeps one connection out of its pool for the next statement (Checkout):
    the connection a worker's claims run on while they come one at a time. It is warmed
    too, not only the connections the warm-up takes from the pool."""
    store = PostgresStore(pg_database)
    await store.open()
    try:
        assert await store.get_job(uuid.uuid4()) is None  # a read: the store keeps a connection
        async with store._connection() as kept:
            assert await kept.fetchval(PREPARED_CLAIMS) == 0
        await store.warm()
        async with store._connection() as conn:
            assert conn is kept
            assert await conn.fetchval(PREPARED_CLAIMS) >= 1
    finally:
        await store.close()


async def test_a_failed_warm_up_gives_back_no_connection_still_busy(
    empty_pg_database: str,
) -> None:
    """On a database that is not migrated the warm-up fails on every connection it took,
    at slightly different times. It gives them back to the pool only once all of them are
    done: one given back while its statement was still running was busy for the next task
    to take it (a worker's first record of itself failed with "another operation is in
    progress"; 6 of 10 rounds here before the fix)."""
    for _ in range(10):
        store = PostgresStore(empty_pg_database)
        await store.open()
        try:
            with pytest.raises(StoreError):
                await store.warm()
            await asyncio.gather(*(store.ping() for _ in range(3)))  # each needs a free one
        finally:
            await store.close()
