"""PostgreSQL faults: connections killed under a running worker lose nothing."""

from __future__ import annotations

import asyncio
from typing import Any

import asyncpg
import pytest

from async_jobs import (
    EnqueueRequest,
    JobApp,
    JobContext,
    JobState,
    StoreError,
    StoreUnavailableError,
    WorkerConfig,
)
from async_jobs.domain.errors import SchemaMissingError
from async_jobs.stores.postgres import PostgresStore
from tests.helpers import terminate_other_backends, wait_until


async def test_worker_survives_its_connections_being_terminated(pg_database: str) -> None:
    app = JobApp(pg_database)
    gate = asyncio.Event()
    started = 0

    @app.job("gated")
    async def gated(ctx: JobContext, payload: dict[str, Any]) -> int:
        nonlocal started
        started += 1
        await gate.wait()
        return int(payload["n"])

    async with app:
        await app.enqueue_many([EnqueueRequest("gated", {"n": n}) for n in range(20)])
        worker = app.worker(WorkerConfig(concurrency=5, poll_interval_seconds=0.1))
        running = asyncio.create_task(worker.run())
        await wait_until(lambda: started == 5)
        assert await terminate_other_backends(pg_database) >= 1
        gate.set()

        async def all_done() -> bool:
            try:
                page = await app.list_jobs(limit=100)
            except StoreUnavailableError:  # this reader's pooled connection was killed too
                return False
            return all(j.status is JobState.SUCCEEDED for j in page.items)

        await wait_until(all_done, timeout=30)
        worker.stop()
        await asyncio.wait_for(running, 10)
        page = await app.list_jobs(limit=100)
        assert sorted(j.result for j in page.items) == list(range(20))
        assert all(j.attempts == 1 for j in page.items)


async def test_a_lost_listen_connection_is_made_again(pg_database: str) -> None:
    app = JobApp(pg_database)
    ran = asyncio.Event()

    @app.job("ping")
    async def ping(ctx: JobContext, payload: dict[str, Any]) -> str:
        ran.set()
        return "pong"

    async with app:
        # A poll interval far longer than the test: only a wake-up can start the job in time.
        worker = app.worker(WorkerConfig(concurrency=2, poll_interval_seconds=60))
        running = asyncio.create_task(worker.run())
        try:
            store = app.store
            listener = store._listener  # type: ignore[attr-defined]
            await wait_until(lambda: listener.connection is not None)
            first = listener.connection
            assert await terminate_other_backends(pg_database) >= 1  # the listener among them
            await wait_until(
                lambda: listener.connection not in (None, first),
                timeout=10,
            )
            job = await app.enqueue("ping")
            await asyncio.wait_for(ran.wait(), 10)

            async def succeeded() -> bool:
                try:
                    return (await app.get_job(job.id)).status is JobState.SUCCEEDED
                except StoreUnavailableError:  # a pooled connection killed above
                    return False

            await wait_until(succeeded, timeout=10)
        finally:
            worker.stop()
            await asyncio.wait_for(running, 10)


# -- the store's connection for one block: the kept one when free, else one from the pool


async def _in_transaction(store: PostgresStore) -> bool:
    async with store._connection() as conn:
        return bool(conn.is_in_transaction())


async def test_a_failed_statement_is_our_error_and_the_next_one_runs(pg_database: str) -> None:
    store = PostgresStore(pg_database)
    await store.open()
    try:
        with pytest.raises(StoreError, match="division by zero") as caught:
            async with store._connection() as conn:
                await conn.fetchval("SELECT 1 / 0")
        assert isinstance(caught.value.__cause__, asyncpg.PostgresError)
        with pytest.raises(SchemaMissingError):
            async with store._connection() as conn:
                await conn.fetchval("SELECT * FROM async_jobs_no_such_table")
        await store.ping()
    finally:
        await store.close()


async def test_a_statement_the_server_cannot_run_now_is_an_outage_not_a_refusal(
    pg_database: str,
) -> None:
    """A cancelled statement (here by a timeout) says nothing against what it wrote: the
    store answers StoreUnavailableError, so a worker keeps its outcomes and writes them
    again later instead of taking them for outcomes the store refuses."""
    store = PostgresStore(pg_database)
    await store.open()

    async def past_a_timeout() -> None:
        async with store._connection() as conn, conn.transaction():
            await conn.execute("SET LOCAL statement_timeout = 10")  # milliseconds
            await conn.fetchval("SELECT pg_sleep(5)")

    try:
        with pytest.raises(StoreUnavailableError, match="cannot do this now") as caught:
            await past_a_timeout()
        assert isinstance(caught.value.__cause__, asyncpg.QueryCanceledError)
        await store.ping()
    finally:
        await store.close()


async def test_a_block_that_leaves_a_transaction_open_does_not_pass_it_on(
    pg_database: str,
) -> None:
    store = PostgresStore(pg_database)
    await store.open()
    try:
        for _ in range(3):  # the kept connection, then others, each left mid-transaction
            async with store._connection() as conn:
                await conn.execute("BEGIN")
                await conn.execute("CREATE TEMP TABLE left_behind (x int)")
            assert not await _in_transaction(store)
    finally:
        await store.close()


async def test_nested_and_cancelled_blocks_give_their_connections_back(pg_database: str) -> None:
    store = PostgresStore(pg_database, max_connections=3)
    await store.open()
    try:
        async with store._connection() as outer, store._connection() as inner:
            assert outer is not inner  # the kept one is busy: the inner block got another
            assert await inner.fetchval("SELECT 2") == 2
        held = asyncio.Event()

        async def hold() -> None:
            async with store._connection() as conn:
                await conn.execute("BEGIN")
                held.set()
                await conn.fetchval("SELECT pg_sleep(30)")

        task = asyncio.create_task(hold())
        await held.wait()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        # Every connection came back, none of them mid-transaction: three blocks at once
        # still get one each.
        results = await asyncio.gather(*(_in_transaction(store) for _ in range(3)))
        assert results == [False, False, False]
    finally:
        await store.close()


async def test_a_killed_connection_is_replaced(pg_database: str) -> None:
    store = PostgresStore(pg_database)
    await store.open()
    try:
        await store.ping()  # the kept connection exists
        assert await terminate_other_backends(pg_database) >= 1
        with pytest.raises(StoreUnavailableError):
            await store.ping()
        await store.ping()  # a new connection from the pool
    finally:
        await store.close()
    with pytest.raises(StoreError, match="not open"):
        await store.ping()
