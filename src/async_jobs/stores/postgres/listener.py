"""The LISTEN connection: wakes idle workers on new jobs and tells watchers of cancelled and
finished jobs (polling remains the correctness path); and the NOTIFY of finished jobs."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections.abc import Callable, Sequence

import asyncpg

from async_jobs.domain.jobs import (
    Job,
    JobId,
)
from async_jobs.stores.postgres.connection import BROKEN, UNAVAILABLE
from async_jobs.stores.postgres.queries import QUERIES
from async_jobs.stores.watchers import tell

log = logging.getLogger(__name__)

NOTIFY_CHANNEL = "async_jobs_inserted"
CANCEL_CHANNEL = "async_jobs_cancel"
FINISHED_CHANNEL = "async_jobs_finished"
LISTENER_CHECK_SECONDS = 15.0  # an idle LISTEN connection is pinged this often


class Listener:
    """The store's LISTEN connection, made when first needed and made again when lost."""

    def __init__(self, dsn: str, connect_timeout: float) -> None:
        self.dsn = dsn
        self._connect_timeout = connect_timeout
        self.connection: asyncpg.Connection | None = None
        self._listener_checked = 0.0
        self._listener_work: asyncio.Future[bool] | None = None
        self._wakeup = asyncio.Event()
        self._cancel_watchers: list[Callable[[JobId], None]] = []
        self._finish_watchers: list[Callable[[JobId], None]] = []
        self._listening_finished = False

    async def close(self) -> None:
        if self._listener_work is not None and not self._listener_work.done():
            with contextlib.suppress(Exception):
                await asyncio.wait_for(asyncio.shield(self._listener_work), 5)
        if self.connection is not None:
            with contextlib.suppress(Exception):
                await self.connection.close(timeout=2)
            self.connection = None

    def watch_cancellations(self, callback: Callable[[JobId], None]) -> None:
        self._cancel_watchers.append(callback)

    async def watch_finished(self, callback: Callable[[JobId], None]) -> bool:
        if callback not in self._finish_watchers:
            self._finish_watchers.append(callback)
        if not await self._ensure_listener():
            return False
        if not self._listening_finished and self.connection is not None:
            try:
                await self.connection.add_listener(FINISHED_CHANNEL, self._on_finished)
            except (*BROKEN, asyncpg.PostgresError) as exc:
                log.warning("cannot LISTEN for finished jobs: %s", exc)
                return False
            self._listening_finished = True
        return True

    async def wait_for_jobs(self, timeout: float) -> None:
        if not await self._ensure_listener():
            await asyncio.sleep(timeout)
            return
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._wakeup.wait(), timeout)
        self._wakeup.clear()

    async def _ensure_listener(self) -> bool:
        """(Re)make the LISTEN connection, and ping it when it has been quiet for a while
        (a half-open TCP connection delivers nothing and reports nothing); False when it
        cannot be had now. The work runs shielded: a waiter cancelled meanwhile (the worker
        stopping) must not leave a half-made connection behind."""
        listener = self.connection
        fresh = time.monotonic() - self._listener_checked < LISTENER_CHECK_SECONDS
        if listener is not None and not listener.is_closed() and fresh:
            return True
        if self._listener_work is None or self._listener_work.done():
            self._listener_work = asyncio.ensure_future(self._refresh_listener())
        return await asyncio.shield(self._listener_work)

    async def _refresh_listener(self) -> bool:
        listener = self.connection
        if listener is not None and not listener.is_closed():
            if time.monotonic() - self._listener_checked < LISTENER_CHECK_SECONDS:
                return True
            try:
                await listener.fetchval(QUERIES["ping"], timeout=self._connect_timeout)
                self._listener_checked = time.monotonic()
                return True
            except (*BROKEN, asyncpg.PostgresError) as exc:
                log.warning("the LISTEN connection stopped answering; making a new one: %s", exc)
                listener.terminate()
                self.connection = None
        try:
            conn = await asyncpg.connect(self.dsn, timeout=self._connect_timeout)
        except (*UNAVAILABLE, asyncpg.PostgresError) as exc:
            log.warning("cannot LISTEN for new jobs, polling only: %s", exc)
            return False
        try:
            await conn.add_listener(NOTIFY_CHANNEL, self._on_notify)
            await conn.add_listener(CANCEL_CHANNEL, self._on_cancel)
            if self._finish_watchers:  # only where someone waits for outcomes
                await conn.add_listener(FINISHED_CHANNEL, self._on_finished)
            conn.add_termination_listener(self._on_listener_lost)
        except (*BROKEN, asyncpg.PostgresError) as exc:
            conn.terminate()
            log.warning("cannot LISTEN for new jobs, polling only: %s", exc)
            return False
        self.connection = conn
        self._listening_finished = bool(self._finish_watchers)
        self._listener_checked = time.monotonic()
        self._wakeup.set()  # notifications may have been missed while it was down
        return True

    def _on_notify(self, *_: object) -> None:
        self._wakeup.set()

    def _on_cancel(self, _conn: object, _pid: int, _channel: str, payload: str) -> None:
        _tell(self._cancel_watchers, payload)

    def _on_finished(self, _conn: object, _pid: int, _channel: str, payload: str) -> None:
        _tell(self._finish_watchers, payload)

    def _on_listener_lost(self, *_: object) -> None:
        """The LISTEN connection closed: wake the waiting worker, which polls once and makes
        a new one (notifications sent meanwhile are lost; the poll finds their jobs)."""
        self.connection = None
        self._wakeup.set()


def _tell(watchers: Sequence[Callable[[JobId], None]], payload: str) -> None:
    """Tell the watchers of every job id of a notification's payload (comma-separated)."""
    job_ids = []
    for part in payload.split(","):
        try:
            job_ids.append(JobId(uuid.UUID(part)))
        except ValueError:
            continue
    tell(watchers, job_ids)


async def announce_finished(conn: asyncpg.Connection, jobs: Sequence[Job]) -> None:
    """NOTIFY waiters of the jobs that have ended (record_outcomes does it in its statement)."""
    ended = [str(job.id) for job in jobs if job.status.is_terminal]
    for start in range(0, len(ended), 200):
        await conn.execute(QUERIES["announce_finished"], ",".join(ended[start : start + 200]))
