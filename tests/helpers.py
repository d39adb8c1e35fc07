"""Small helpers shared by the test tiers."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Callable
from typing import Any

from async_jobs.domain.jobs import NewJob
from async_jobs.domain.validation import build_new_job


async def wait_until(
    condition: Callable[[], Any], timeout: float = 10.0, interval: float = 0.02
) -> Any:
    """Poll ``condition`` (sync or async) until it returns something truthy, or fail."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        value = condition()
        if asyncio.iscoroutine(value):
            value = await value
        if value:
            return value
        if loop.time() > deadline:
            raise AssertionError(f"condition not met within {timeout}s")
        await asyncio.sleep(interval)  # wait-ok: polling interval of a deadline-bound wait


def new_job(job_type: str = "echo", payload: dict[str, Any] | None = None, **kw: Any) -> NewJob:
    return build_new_job(job_type, payload or {}, **kw)


async def terminate_other_backends(dsn: str) -> int:
    """``pg_terminate_backend`` every other session of the DSN's database; how many."""
    import asyncpg

    database = dsn.rsplit("/", 1)[1]
    conn = await asyncpg.connect(dsn)
    try:
        return int(
            await conn.fetchval(
                "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                "WHERE datname = $1 AND pid <> pg_backend_pid()",
                database,
            )
        )
    finally:
        await conn.close()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])
