"""Define a handler, enqueue jobs, run a worker until they are done, print the results.

python examples/simple_example.py                    # embedded SQLite file
ASYNC_JOBS_DB_DSN=postgresql://postgres@127.0.0.1/mydb python examples/simple_example.py
"""

from __future__ import annotations

import asyncio
import os
import tempfile
from typing import Any

from async_jobs import JobApp, JobContext, WorkerConfig


async def main() -> None:
    default_dsn = f"sqlite:///{tempfile.mkdtemp()}/example.db"
    app = JobApp(os.environ.get("ASYNC_JOBS_DB_DSN", default_dsn))

    @app.job("calculate", max_attempts=3)
    async def calculate(ctx: JobContext, payload: dict[str, Any]) -> dict[str, int]:
        return {"sum": sum(payload["numbers"])}

    @app.job()
    class SayHelloJob:
        async def handle(self, ctx: JobContext, payload: dict[str, Any]) -> str:
            return f"hello, {payload['name']}"

    async with app:
        await app.migrate()
        total = await app.enqueue("calculate", {"numbers": [1, 2, 3]}, priority="high")
        hello = await app.enqueue(SayHelloJob, {"name": "world"}, tenant_id="t1", delay=0)
        await app.run_worker(WorkerConfig(concurrency=4, burst=True))
        for job in (total, hello):
            done = await app.get_job(job.id)
            print(f"{done.type}: {done.status} -> {done.result}")


if __name__ == "__main__":
    asyncio.run(main())
