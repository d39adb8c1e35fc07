"""Small helpers shared by the test tiers."""

from __future__ import annotations

import asyncio
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Literal

from async_jobs.domain.jobs import NewJob
from async_jobs.domain.validation import build_new_job

if TYPE_CHECKING:
    from collections.abc import Sequence

    from async_jobs import JobApp, JobContext
    from async_jobs.domain.jobs import JobId
    from async_jobs.ports import JobStore


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


async def age_leases(
    store: JobStore,
    job_ids: Sequence[JobId],
    seconds: float = 3600,
    column: str = "lease_expires_at",
) -> None:
    """Make ``column`` (a time: the lease's end, ``expires_at`` or ``run_at``) of ``job_ids`` fall
    ``seconds`` earlier, as if that much time had passed: the way to test what happens to a
    lease that ran out without waiting for one. The SQL stores move those rows' times back;
    the memory store moves its clock forward, which ages every job at once, so a job meant
    to keep its lease must hold one longer than ``seconds``."""
    import contextlib
    import sqlite3
    from datetime import timedelta

    import asyncpg

    from async_jobs.stores.memory import MemoryStore
    from async_jobs.stores.postgres import PostgresStore
    from async_jobs.stores.sqlite import SqliteStore

    assert column in ("lease_expires_at", "expires_at", "run_at"), column
    if isinstance(store, PostgresStore):
        conn = await asyncpg.connect(store.dsn)
        try:
            await conn.execute(
                f"UPDATE async_jobs SET {column} = {column}"
                " - make_interval(secs => $2) WHERE id = ANY($1::uuid[])",
                list(job_ids),
                seconds,
            )
        finally:
            await conn.close()
    elif isinstance(store, SqliteStore):
        marks = ", ".join("?" for _ in job_ids)
        with contextlib.closing(sqlite3.connect(store.path, timeout=5)) as conn, conn:
            conn.execute(
                f"UPDATE async_jobs SET {column} = {column} - ? WHERE id IN ({marks})",
                [seconds, *(str(i) for i in job_ids)],
            )
    elif isinstance(store, MemoryStore):
        clock = store._clock
        store._clock = lambda: clock() + timedelta(seconds=seconds)
    else:
        raise AssertionError(f"no way to age jobs in {type(store).__name__}")


class WatchedEvent(asyncio.Event):
    """An event that says when someone starts waiting on it. Put in place of a component's
    own wake-up event, it lets a test act once the component really waits (``awaited``)
    instead of sleeping for a while and hoping it does."""

    def __init__(self) -> None:
        super().__init__()
        self.awaited = asyncio.Event()

    async def wait(self) -> Literal[True]:
        self.awaited.set()
        return await super().wait()


def watch_wakeup(store: object) -> WatchedEvent:
    """Put a ``WatchedEvent`` in place of the event a store's ``wait_for_jobs`` waits on (the
    PostgreSQL store's is its LISTEN connection's)."""
    wakeup = WatchedEvent()
    holder = getattr(store, "_listener", store)
    holder._wakeup = wakeup
    return wakeup


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


class SqsServer:
    """A local SQS-compatible server (moto's server mode) in a process of its own, on a free
    port; ``restart()`` stops and starts it again (its queues are gone then)."""

    def __init__(self) -> None:
        self.port = free_port()
        self.endpoint = f"http://127.0.0.1:{self.port}"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 30.0) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(self.port)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + timeout
        while True:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                    return
            except OSError:
                if self.process.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError("the local SQS server did not start") from None
                time.sleep(0.05)  # wait-ok: polling interval of a deadline-bound wait

    def stop(self) -> None:
        if self.process is not None:
            self.process.terminate()
            self.process.wait(timeout=10)
            self.process = None

    def queue_url(self, name: str) -> str:
        return f"{self.endpoint}/123456789012/{name}"


def register_handler_styles(app: JobApp) -> tuple[type, list[str]]:
    """The three handler styles on ``app``: ``add`` (async function), ``blocking`` (sync
    function, run in a thread) and ``greet`` (a class with ``handle``). Returns the class, to
    enqueue by, and the list of thread names the sync handler ran in."""
    threads: list[str] = []

    @app.job("add")
    async def add(ctx: JobContext, payload: dict[str, Any]) -> int:
        return int(payload["a"]) + int(payload["b"])

    @app.job("blocking")
    def blocking(ctx: JobContext, payload: dict[str, Any]) -> str:
        import threading

        threads.append(threading.current_thread().name)
        return "done"

    @app.job()
    class GreetJob:
        async def handle(self, ctx: JobContext, payload: dict[str, Any]) -> dict[str, Any]:
            return {"hello": payload["name"], "attempt": ctx.attempt}

    return GreetJob, threads


def register_held_job(app: JobApp, job_type: str = "long") -> tuple[asyncio.Event, asyncio.Event]:
    """A handler of ``job_type`` that sets the first event when it starts, then waits for
    the second before it returns ``"finished"``: a job held running until the test lets go."""
    started = asyncio.Event()
    release = asyncio.Event()

    @app.job(job_type)
    async def held(ctx: JobContext, payload: dict[str, Any]) -> str:
        started.set()
        await release.wait()
        return "finished"

    return started, release
