"""Connections: the pool's set-up, the one ``async with`` block's connection (the kept one when
free), and the one place driver errors become ours."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import asyncpg

from async_jobs.domain.errors import (
    AsyncJobsError,
    ConfigurationError,
    SchemaMissingError,
    StoreError,
    StoreRefusedError,
    StoreUnavailableError,
)
from async_jobs.domain.jobs import ERROR_MESSAGE_LIMIT, MAX_HISTORY
from async_jobs.domain.validation import json_dumps
from async_jobs.stores.postgres.queries import QUERIES

if TYPE_CHECKING:
    from async_jobs.stores.postgres.store import PostgresStore

UNAVAILABLE = (
    OSError,
    asyncio.TimeoutError,
    asyncpg.PostgresConnectionError,
    asyncpg.CannotConnectNowError,
    asyncpg.InterfaceError,
    asyncpg.AdminShutdownError,
    asyncpg.ConnectionFailureError,
)
# The server or the driver refused a value of the statement (SQLSTATE classes 22 and 23: bad
# data, a broken constraint; an argument the driver cannot encode): sent again, it fails again.
REFUSED = (
    asyncpg.DataError,
    asyncpg.IntegrityConstraintViolationError,
    asyncpg.exceptions._base.DataError,  # the driver's own: an argument it cannot encode
    UnicodeError,
)
# A connection in any of these states is not trusted again.
BROKEN = (*UNAVAILABLE, asyncpg.InternalClientError)
# A server that cannot run the statement now but may soon (SQLSTATE classes 53, 57, 40, 58):
# out of connections, memory or disk; a cancel (a timeout, an operator) or a shutdown; a
# deadlock or a serialization failure; an I/O error. Nothing in the statement was refused,
# so callers wait and try it again, as for a lost connection.
NOT_NOW = (
    asyncpg.InsufficientResourcesError,
    asyncpg.OperatorInterventionError,
    asyncpg.TransactionRollbackError,
    asyncpg.PostgresSystemError,
)


@contextlib.contextmanager
def our_errors() -> Iterator[None]:
    """Driver errors leave this block as our own errors."""
    try:
        yield
    except Exception as exc:
        raise_ours(exc)
        raise


def raise_ours(exc: BaseException) -> None:
    """Raise our own error for a driver error (the one place they are mapped); return for
    any other exception, which the caller lets go on as it is."""
    if isinstance(exc, AsyncJobsError):
        return
    if isinstance(exc, asyncpg.UndefinedTableError):
        raise SchemaMissingError("the jobs table does not exist; run `async-jobs migrate`") from exc
    if isinstance(exc, REFUSED):  # before BROKEN: the driver's refusal is an InterfaceError
        raise StoreRefusedError(f"PostgreSQL refused a value: {exc}") from exc
    if isinstance(exc, BROKEN):
        raise StoreUnavailableError(f"PostgreSQL is unavailable: {exc}") from exc
    if isinstance(exc, NOT_NOW):
        raise StoreUnavailableError(f"PostgreSQL cannot do this now: {exc}") from exc
    if isinstance(exc, asyncpg.PostgresError):
        raise StoreError(f"PostgreSQL error: {exc}") from exc


class Checkout:
    """A connection checked out for one ``async with`` block (``PostgresStore._connection``;
    not a job lease): the store's kept connection when it is free, else one from the pool,
    which becomes the kept one when there is none. A class rather than a generator-based
    context manager: every statement of the store goes through it, and the generators'
    machinery cost 20 us of CPU per block here (this class: 4 us), a tenth of a single
    enqueue's client work."""

    __slots__ = ("_conn", "_kept", "_pool", "_store")
    _conn: asyncpg.Connection
    _kept: bool  # the store's kept connection, not one acquired from the pool
    _pool: asyncpg.Pool

    def __init__(self, store: PostgresStore) -> None:
        self._store = store

    async def __aenter__(self) -> asyncpg.Connection:
        store = self._store
        pool = store._pool
        if pool is None:
            raise StoreError("the store is not open; call open() first")
        self._pool = pool
        kept = store._kept
        self._kept = kept is not None and not store._kept_busy
        if kept is not None and self._kept:
            store._kept_busy = True
            self._conn = kept
            return kept
        try:
            self._conn = await pool.acquire()
        except Exception as exc:
            raise_ours(exc)
            raise
        return self._conn

    async def __aexit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: object
    ) -> None:
        try:
            if self._kept:
                await self._put_back_kept(exc)
            else:
                await self._release(exc)
        except Exception as failed:
            raise_ours(failed)
            raise
        if isinstance(exc, Exception):
            raise_ours(exc)

    async def _put_back_kept(self, exc: BaseException | None) -> None:
        store, conn, pool = self._store, self._conn, self._pool
        store._kept_busy = False
        # After an error or a cancellation, the pool's release resets it; after close(), the
        # closing pool waits for it.
        if exc is not None or conn.is_in_transaction() or store._pool is not pool:
            store._kept = None
            await store._give_back(pool, conn)

    async def _release(self, exc: BaseException | None) -> None:
        store, conn, pool = self._store, self._conn, self._pool
        if isinstance(exc, BROKEN):
            conn.terminate()
        if (
            exc is None
            and store._kept is None
            and store._max > 1
            and store._pool is pool
            and not conn.is_in_transaction()
        ):
            store._kept = conn  # the pool keeps at least one other connection
        else:
            await pool.release(conn)


async def run_worker_statements(conn: asyncpg.Connection) -> None:
    """Each statement of a worker's path (and of the dispatch, which a worker that leads
    runs), with arguments that match no job (see ``PostgresStore.warm``).

    The claim function plans each of its statements when it first runs it, so it is called
    twice: for every use case (which plans the look-up of the use cases with pending jobs,
    and returns there when there are none, as in a new database) and for the use case ""
    (no job has it: a name is never empty), which plans the rest, taking nothing (limit 0).
    Called only the first way, a worker that started on an empty table planned its claim's
    main statement on its first job (5-7 ms of that job's start)."""
    nothing: list[Any] = []
    for use_cases in (nothing, [""]):
        claim = (0, use_cases, nothing, "", 1.0, 0, *[nothing] * 6)
        await conn.fetch(QUERIES["claim_jobs"], *claim, False)
        await conn.fetch(QUERIES["dispatch_jobs"], *claim)
    await conn.fetch(QUERIES["claim_dispatched"], nothing, nothing, nothing, "", 1.0)
    await conn.fetch(QUERIES["record_outcomes"], *([nothing] * 7), MAX_HISTORY, ERROR_MESSAGE_LIMIT)
    await conn.fetch(QUERIES["extend_leases"], nothing, nothing, nothing, 1.0)


async def driver_connection(connection: object) -> asyncpg.Connection:
    """The asyncpg connection behind what a caller passes for a transactional enqueue: an
    asyncpg connection (pooled or not), or a SQLAlchemy ``AsyncSession`` or
    ``AsyncConnection`` on the asyncpg driver, whose transaction is begun if it was not."""
    if isinstance(connection, asyncpg.Connection | asyncpg.pool.PoolConnectionProxy):
        return connection
    session_connection = getattr(connection, "connection", None)
    get_raw = getattr(connection, "get_raw_connection", None)
    if get_raw is None and callable(session_connection):  # an AsyncSession
        connection = await session_connection()
        get_raw = getattr(connection, "get_raw_connection", None)
    if get_raw is not None:  # a SQLAlchemy AsyncConnection
        raw = await get_raw()
        driver = getattr(raw, "driver_connection", None)
        if isinstance(driver, asyncpg.Connection):
            if not driver.is_in_transaction():
                # SQLAlchemy begins the database transaction at its first statement.
                await connection.exec_driver_sql(QUERIES["ping"])  # type: ignore[attr-defined]
            return driver
    raise ConfigurationError(
        "enqueue(connection=...) takes an asyncpg connection or a SQLAlchemy AsyncSession "
        f"or AsyncConnection on the asyncpg driver, not {type(connection).__name__}"
    )


async def reset_connection(conn: asyncpg.Connection) -> None:
    """Pool connections keep no session state (no LISTEN, no SET), so the default reset
    (a round trip on every release) is not needed; only an abandoned transaction is undone."""
    if conn.is_closed() or not conn.is_in_transaction():
        return
    try:
        await conn.execute(QUERIES["rollback"])
    except (*BROKEN, asyncpg.PostgresError):
        conn.terminate()  # the pool replaces it


async def init_connection(conn: asyncpg.Connection) -> None:
    await conn.set_type_codec("jsonb", encoder=json_dumps, decoder=json.loads, schema="pg_catalog")
