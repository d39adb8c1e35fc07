"""What may run now: a use case capped at 2 at once, a tenant's quota, fair turns between
tenants, pausing a use case, a periodic job, and the statistics.

python examples/scheduling_example.py                 # embedded SQLite file
ASYNC_JOBS_DB_DSN=postgresql://postgres@127.0.0.1/mydb python examples/scheduling_example.py
"""

from __future__ import annotations

import asyncio
import os
import tempfile
from typing import Any

from async_jobs import (
    EnqueueRequest,
    JobApp,
    JobContext,
    QuotaExceededError,
    Settings,
    TenantQuota,
    WorkerConfig,
)


async def main() -> None:
    settings = Settings(
        db_dsn=os.environ.get("ASYNC_JOBS_DB_DSN", f"sqlite:///{tempfile.mkdtemp()}/example.db"),
        # The same as ASYNC_JOBS_THUMBNAILS_MAX_CONCURRENT=2 and
        # ASYNC_JOBS_PER_TENANT_QUOTAS='{"free-plan": {"*": {"max_pending": 3}}}'
        max_concurrent={"thumbnails": 2},
        per_tenant_quotas={"free-plan": {"*": TenantQuota(max_pending=3)}},
    )
    app = JobApp(settings=settings)
    running_now: list[int] = [0]
    most_at_once: list[int] = [0]
    started: list[str] = []
    all_started = asyncio.Event()

    @app.job("thumbnail", use_case="thumbnails")
    async def thumbnail(ctx: JobContext, payload: dict[str, Any]) -> None:
        started.append(ctx.job.tenant_id)
        if len(started) == 16:
            all_started.set()
        running_now[0] += 1
        most_at_once[0] = max(most_at_once[0], running_now[0])
        await asyncio.sleep(0.05)
        running_now[0] -= 1

    @app.periodic("* * * * *")  # every minute, enqueued once per tick by the leading scheduler
    async def heartbeat(ctx: JobContext, payload: dict[str, Any]) -> str:
        return "still here"

    async with app:
        await app.migrate()
        # A big customer's backlog, then one small customer's job.
        jobs = await app.enqueue_many(
            [EnqueueRequest("thumbnail", tenant_id="big-customer") for _ in range(12)]
        )
        jobs.append(await app.enqueue("thumbnail", tenant_id="small-customer"))

        for n in range(4):
            try:
                jobs.append(await app.enqueue("thumbnail", tenant_id="free-plan"))
            except QuotaExceededError as exc:
                print(f"free-plan job {n + 1}: refused ({exc.code})")

        await app.pause("thumbnails")
        worker = app.worker(WorkerConfig(concurrency=10, poll_interval_seconds=0.05))
        scheduler = app.scheduler()
        tasks = [asyncio.create_task(worker.run()), asyncio.create_task(scheduler.run())]
        await asyncio.sleep(0.3)
        print(f"while paused, thumbnails started: {len(started)}")
        await app.resume("thumbnails")

        await asyncio.wait_for(all_started.wait(), 30)
        print(f"at most {most_at_once[0]} thumbnails ran at once")
        print(f"small-customer's job started {started.index('small-customer') + 1} of 16")
        for job in jobs:
            await app.wait_for(job.id, timeout=10)
        stats = await app.stats()
        succeeded = sum(
            c.count for c in stats.counts if (c.use_case, c.status) == ("thumbnails", "succeeded")
        )
        print(f"thumbnails succeeded: {succeeded}")
        # What a monitor polls: everything but the counts, which read every job.
        light = await app.stats(with_counts=False)
        print(f"finished in the last hour: {sum(light.finished_last_hour.values())}")
        print(f"heartbeat ticks enqueued: {scheduler.periodic_enqueued}")
        worker.stop()
        scheduler.stop()
        await asyncio.gather(*tasks)


if __name__ == "__main__":
    asyncio.run(main())
