"""Several worker processes under one command: ``async-jobs worker --processes 2``.

Enqueues 40 jobs, runs two worker processes in burst mode (each exits when nothing is left)
and shows how the jobs were shared between them.

python examples/worker_processes_example.py                 # embedded SQLite file
ASYNC_JOBS_DB_DSN=postgresql://postgres@127.0.0.1/mydb python examples/worker_processes_example.py
"""

from __future__ import annotations

import asyncio
import collections
import os
import subprocess
import sys
import tempfile

from async_jobs import JobApp, JobFilter

DSN = os.environ.get("ASYNC_JOBS_DB_DSN", f"sqlite:///{tempfile.mkdtemp()}/example.db")


async def enqueue(count: int) -> None:
    async with JobApp(DSN, handler_modules=["async_jobs.demo"]) as app:
        await app.migrate()
        for n in range(count):
            await app.enqueue("sleep", {"seconds": 0.05, "message": f"job {n}"})


async def report() -> None:
    async with JobApp(DSN) as app:
        page = await app.list_jobs(JobFilter(), limit=1000)
    by_worker = collections.Counter(job.worker_id for job in page.items)
    statuses = collections.Counter(job.status.value for job in page.items)
    print(f"jobs: {dict(statuses)}")
    shares = ", ".join(str(n) for n in sorted(by_worker.values(), reverse=True))
    print(f"jobs per worker process: {shares}")


def main() -> None:
    asyncio.run(enqueue(40))
    env = {**os.environ, "ASYNC_JOBS_DB_DSN": DSN}
    command = [sys.executable, "-m", "async_jobs", "worker", "--handlers", "async_jobs.demo"]
    command += ["--processes", "2", "--concurrency", "5", "--burst"]
    done = subprocess.run(command, env=env, capture_output=True, text=True, check=False)
    print(f"async-jobs worker --processes 2 --burst exited {done.returncode}")
    print(f"ready lines: {done.stdout.count('async-jobs worker ready')}")
    asyncio.run(report())


if __name__ == "__main__":
    main()
