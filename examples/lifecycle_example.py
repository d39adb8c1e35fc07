"""Retries with a backoff and a history, progress, and cancelling a running job.

python examples/lifecycle_example.py                 # embedded SQLite file
ASYNC_JOBS_DB_DSN=postgresql://postgres@127.0.0.1/mydb python examples/lifecycle_example.py
"""

from __future__ import annotations

import asyncio
import os
import tempfile
from typing import Any

from async_jobs import Backoff, JobApp, JobContext, RetryAfter, WorkerConfig


async def main() -> None:
    default_dsn = f"sqlite:///{tempfile.mkdtemp()}/example.db"
    app = JobApp(os.environ.get("ASYNC_JOBS_DB_DSN", default_dsn))

    @app.job("flaky_upload", max_attempts=4, backoff=Backoff.constant(0.2))
    async def flaky_upload(ctx: JobContext, payload: dict[str, Any]) -> str:
        if ctx.attempt == 1:
            raise ConnectionError("storage timed out")
        if ctx.attempt == 2:
            raise RetryAfter(0.1, "storage asked us to slow down")
        return f"uploaded {payload['file']}"

    a_while_in = asyncio.Event()

    @app.job("report", timeout_seconds=60)
    async def report(ctx: JobContext, payload: dict[str, Any]) -> str:
        for page in range(1, 1001):
            await ctx.progress(page / 10, f"page {page} of 1000")
            await asyncio.sleep(0.01)
            if page == 50:
                a_while_in.set()
        return "report ready"

    async with app:
        await app.migrate()
        upload = await app.enqueue("flaky_upload", {"file": "cat.png"})
        long_report = await app.enqueue("report")
        worker = app.worker(
            WorkerConfig(concurrency=4, poll_interval_seconds=0.05, progress_interval_seconds=0.1)
        )
        running = asyncio.create_task(worker.run())

        done = await app.wait_for(upload.id, timeout=30)  # the job once it has ended
        print(f"flaky_upload: {done.status} -> {done.result} after {done.attempts} attempts")
        for entry in done.history:  # the attempts that did not succeed
            print(f"  attempt {entry.attempt}: {entry.outcome} {entry.error_message or ''}")

        await a_while_in.wait()
        await app.cancel(long_report.id)
        cancelled = await app.wait_for(long_report.id, timeout=30)
        assert cancelled.progress is not None
        print(f"report: {cancelled.status} at {cancelled.progress.percent:g}%")

        worker.stop()
        await running


if __name__ == "__main__":
    asyncio.run(main())
