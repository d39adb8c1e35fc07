"""Talk to a running server over HTTP with the Python client: enqueue a job, wait for it,
print its result. It starts nothing itself; start a server first:

async-jobs serve                                  # or: make run
python examples/http_client_example.py            # http://127.0.0.1:8000
ASYNC_JOBS_URL=http://jobs.internal:8000 ASYNC_JOBS_TOKEN=... python examples/http_client_example.py
"""

from __future__ import annotations

import os

from async_jobs import JobsClient, JobState


def main() -> None:
    url = os.environ.get("ASYNC_JOBS_URL", "http://127.0.0.1:8000")
    with JobsClient(url, token=os.environ.get("ASYNC_JOBS_TOKEN")) as jobs:
        job = jobs.enqueue("echo", {"hello": "world"}, priority="high")
        print(f"enqueued {job.type} {job.id}: {job.status}")
        job = jobs.wait(job.id, timeout=30)
        if job.status is not JobState.SUCCEEDED:
            raise SystemExit(f"{job.type}: {job.status} ({job.error})")
        print(f"{job.type}: {job.status} -> {job.result}")


if __name__ == "__main__":
    main()
