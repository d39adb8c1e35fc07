"""PostgreSQL faults: connections killed under a running worker lose nothing."""

from __future__ import annotations

import asyncio
from typing import Any

from async_jobs import (
    EnqueueRequest,
    JobApp,
    JobContext,
    JobState,
    StoreUnavailableError,
    WorkerConfig,
)
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
            await wait_until(lambda: getattr(store, "_listener", None) is not None)
            first = store._listener  # type: ignore[attr-defined]
            assert await terminate_other_backends(pg_database) >= 1  # the listener among them
            await wait_until(
                lambda: store._listener not in (None, first),  # type: ignore[attr-defined]
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
