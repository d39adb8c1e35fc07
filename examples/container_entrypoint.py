"""A container's entry point without the command line: ``python container_entrypoint.py
worker`` (or ``scheduler``) builds everything from the ``ASYNC_JOBS_*`` environment and runs
until SIGTERM. A configuration that cannot work ends it at once with a message and exit
status 2 (1: the store did not answer within ``ASYNC_JOBS_STORE_WAIT_SECONDS``).

    ASYNC_JOBS_DB_DSN=postgresql://app@db/jobs ASYNC_JOBS_HANDLERS=myapp.jobs \\
        python examples/container_entrypoint.py worker
"""

import sys

from async_jobs import run_scheduler_loop, run_worker_loop

if __name__ == "__main__":
    role = sys.argv[1] if len(sys.argv) > 1 else "worker"
    entry_points = {"worker": run_worker_loop, "scheduler": run_scheduler_loop}
    if role not in entry_points:
        sys.exit(f"usage: container_entrypoint.py [{' | '.join(entry_points)}]")
    entry_points[role]()
