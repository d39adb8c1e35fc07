"""The SQLite store on aiosqlite: the embedded default, one file, no server.

SQLite admits one writer at a time, so each store keeps one connection and runs one
operation at a time on it, behind an ``asyncio.Lock``. Other processes (``serve`` and a
``worker`` CLI) may open the same file: every write runs in a ``BEGIN IMMEDIATE``
transaction, which takes the file's write lock before reading, so two claimers never see
the same job as pending. A writer that finds the file locked waits ``busy_timeout_seconds``
inside SQLite, then the whole transaction is retried a few times after a short jittered
pause before the store reports itself unavailable.

Times are the database clock, stored as REAL unix epoch seconds (see ``queries.sql``).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import logging
import math
import random
import sqlite3
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable, Iterable, Iterator, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

import aiosqlite

from async_jobs.domain.dispatch import DispatchTicket
from async_jobs.domain.errors import (
    AsyncJobsError,
    InvalidJobError,
    SchemaMissingError,
    StoreError,
    StoreRefusedError,
    StoreUnavailableError,
)
from async_jobs.domain.jobs import (
    ERROR_MESSAGE_LIMIT,
    MAX_HISTORY,
    AttemptOutcome,
    AttemptRecord,
    ClaimRequest,
    Job,
    JobError,
    JobFilter,
    JobId,
    JobPage,
    JobScan,
    JobState,
    LeaseState,
    LeaseToken,
    NewJob,
    OutcomeKind,
    PageCursor,
    Priority,
    Progress,
    ProgressUpdate,
    ScanRequest,
    listing_key,
)
from async_jobs.domain.retry import Backoff
from async_jobs.domain.rollup import MINUTE, EndedJob, RollupWindow, extend_rolled, roll_up
from async_jobs.domain.scheduling import (
    ActiveCounts,
    Candidate,
    JobGauges,
    Leader,
    Stats,
    StatsCount,
    UseCaseState,
    plan_claim,
)
from async_jobs.domain.validation import check_same_request, json_dumps, result_json
from async_jobs.domain.webhooks import (
    DeliveryAttempt,
    DeliveryId,
    DeliveryOutcome,
    DeliveryStatus,
    WebhookDelivery,
)
from async_jobs.domain.workers import LiveProcess, ProcessInfo
from async_jobs.stores import no_caller_transaction
from async_jobs.stores.limits import (
    HOUR,
    ClaimBudget,
    RecentJob,
    build_stats,
    check_pending,
    claim_budget,
    pending_bounds,
    rated_pairs,
)
from async_jobs.stores.rows import claimed, job_gauges, live_process, rollup_rows
from async_jobs.stores.sqlfile import load_migrations, load_queries
from async_jobs.stores.watchers import tell

log = logging.getLogger(__name__)

QUERIES = load_queries("async_jobs.stores.sqlite")
MIGRATIONS_PACKAGE = "async_jobs.stores.sqlite.migrations"

# Oldest SQLite with everything the queries use: RETURNING, UPDATE FROM, STRICT, ->>.
MIN_SQLITE_VERSION = (3, 38, 0)

# Primary result codes (the low byte of an extended code) that mean "not now".
_SQLITE_IOERR = 10
_SQLITE_BUSY = 5
_SQLITE_LOCKED = 6
_SQLITE_FULL = 13
_SQLITE_CANTOPEN = 14
_LOCKED_CODES = frozenset({_SQLITE_BUSY, _SQLITE_LOCKED})
# Busy or locked by another process, an I/O error, a full disk, a file that cannot be opened:
# nothing in the statement was refused, so callers wait and try it again.
_UNAVAILABLE_CODES = frozenset(
    {_SQLITE_BUSY, _SQLITE_LOCKED, _SQLITE_IOERR, _SQLITE_FULL, _SQLITE_CANTOPEN}
)

T = TypeVar("T")
Work = Callable[[aiosqlite.Connection], Awaitable[T]]


class SqliteStore:
    """A ``JobStore`` in one SQLite file (3.38+), shared safely by several processes."""

    def __init__(
        self,
        path: str,
        *,
        busy_timeout_seconds: float = 5.0,
        lock_retries: int = 4,
        retry_pause_seconds: float = 0.02,
    ) -> None:
        """``path`` is a file path; ``busy_timeout_seconds`` is how long SQLite itself waits
        for another connection's lock; ``lock_retries`` how many more times a transaction
        that still found the file locked is run again, after about ``retry_pause_seconds``
        (doubling, jittered)."""
        self.path = path
        self._busy_timeout = busy_timeout_seconds
        self._retries = lock_retries
        self._pause = retry_pause_seconds
        self._conn: aiosqlite.Connection | None = None
        self._lock = asyncio.Lock()
        self._wakeup = asyncio.Event()
        self._cancel_watchers: list[Callable[[JobId], None]] = []
        self._finish_watchers: list[Callable[[JobId], None]] = []

    # -- life cycle -------------------------------------------------------------------------

    async def open(self) -> None:
        if self._conn is not None:
            return
        if sqlite3.sqlite_version_info < MIN_SQLITE_VERSION:
            raise StoreUnavailableError(
                f"the SQLite store needs SQLite 3.38 or newer, this Python has "
                f"{sqlite3.sqlite_version}"
            )
        try:
            # A failed aiosqlite.connect stops its thread without waiting for it, and that
            # thread then reports to the event loop, even one that has closed meanwhile; so a
            # file that cannot be opened is found out by plain sqlite3 first.
            await asyncio.to_thread(_probe, self.path)
            conn = await aiosqlite.connect(
                self.path, timeout=self._busy_timeout, isolation_level=None
            )
        except sqlite3.Error as exc:
            raise StoreUnavailableError(f"cannot open SQLite file {self.path!r}: {exc}") from exc
        try:
            await self._configure(conn)
        except (sqlite3.Error, AsyncJobsError) as exc:
            await conn.close()
            raise StoreUnavailableError(f"cannot use SQLite file {self.path!r}: {exc}") from exc
        self._conn = conn

    async def _configure(self, conn: aiosqlite.Connection) -> None:
        """Row access by name, WAL and NORMAL sync; switching to WAL needs the file's lock
        for a moment, so it is retried like any locked write."""
        conn.row_factory = sqlite3.Row
        rows = await self._retrying(conn, lambda c: _fetch(c, "journal_mode_wal"))
        mode = str(next(iter(rows))[0]).lower()
        if mode != "wal":
            log.warning("SQLite file %r is in %s journal mode, not WAL", self.path, mode)
        await _fetch(conn, "synchronous_normal")

    async def close(self) -> None:
        async with self._lock:
            conn, self._conn = self._conn, None
            if conn is not None:
                with contextlib.suppress(sqlite3.Error, ValueError):
                    await conn.close()

    # -- schema -----------------------------------------------------------------------------

    async def migrate(self) -> list[str]:
        return await self._run(_apply_migrations, write=True)

    async def pending_migrations(self) -> list[str]:
        return await self._run(_pending_migrations, write=False)

    async def ping(self) -> None:
        await self._run(lambda c: _fetch(c, "ping"), write=False)

    async def warm(self) -> None:
        await self.ping()  # one file, one connection: nothing more to open

    # -- enqueue ----------------------------------------------------------------------------

    async def insert_job(self, job: NewJob) -> tuple[Job, bool]:
        return (await self.insert_jobs([job]))[0]

    async def insert_jobs(self, jobs: Iterable[NewJob]) -> list[tuple[Job, bool]]:
        jobs = list(jobs)  # drawn here, not in the thread that writes them
        if not jobs:
            return []
        results = await self._run(lambda c: _insert_jobs(c, jobs), write=True)
        self._wakeup.set()
        return results

    async def insert_jobs_in(
        self, connection: object, jobs: Sequence[NewJob]
    ) -> list[tuple[Job, bool]]:
        raise no_caller_transaction("SQLite")

    # -- reads ------------------------------------------------------------------------------

    async def get_job(self, job_id: JobId, tenant_id: str | None = None) -> Job | None:
        params = {"id": str(job_id), "tenant_id": tenant_id}
        rows = await self._run(lambda c: _fetch(c, "get_job", params), write=False)
        return next((_job_from_row(r) for r in rows), None)

    async def get_job_by_key(self, tenant_id: str, key: str) -> Job | None:
        params = {"tenant_id": tenant_id, "key": key}
        rows = await self._run(lambda c: _fetch(c, "get_job_by_key", params), write=False)
        return next((_job_from_row(r) for r in rows), None)

    async def list_jobs(
        self, where: JobFilter, limit: int, after: PageCursor | None = None
    ) -> JobPage:
        query = "list_jobs" if where.tenant_id is None else "list_tenant_jobs"
        params = _list_params(where, max(limit + 1, 0), after)
        rows = await self._run(lambda c: _fetch(c, query, params), write=False)
        items = [_job_from_row(r) for r in rows[:limit]]
        return JobPage.of(items, more=len(rows) > limit)

    async def scan_jobs(self, request: ScanRequest) -> JobScan:
        params = _scan_params(request)

        async def work(conn: aiosqlite.Connection) -> tuple[list[sqlite3.Row], list[Job]]:
            keys = await _fetch(conn, "scan_jobs", params)
            page = json_dumps([k["id"] for k in keys if k["hit"]][: request.limit])
            return keys, [_job_from_row(r) for r in await _fetch(conn, "get_jobs", {"ids": page})]

        keys, items = await self._run(work, write=False)
        items.sort(key=listing_key, reverse=True)
        last = next((_cursor(k) for k in keys if not k["hit"]), None)
        return JobScan.of(items, sum(1 for k in keys if k["hit"]), request.wanted, last)

    async def count_jobs(self, where: JobFilter, cap: int) -> int:
        params = _list_params(where, 0, None)
        params = {k: v for k, v in params.items() if not k.startswith(("after_", "limit"))}
        params["cap"] = cap
        rows = await self._run(lambda c: _fetch(c, "count_jobs", params), write=False)
        return int(rows[0]["n"])

    async def active_counts(self, tenant_id: str | None, cap: int) -> list[ActiveCounts]:
        params = {"tenant_id": tenant_id, "cap": cap}
        rows = await self._run(lambda c: _fetch(c, "active_counts", params), write=False)
        return [
            ActiveCounts(r["name"], bool(r["paused"]), r["pending"], r["queued"], r["running"])
            for r in rows
        ]

    async def count_queued(self, use_cases: Sequence[str], cap: int) -> dict[str, int]:
        counts = dict.fromkeys(use_cases, 0)
        if not counts or cap <= 0:
            return counts
        params = {"use_cases": json_dumps(list(counts)), "cap": cap}
        rows = await self._run(lambda c: _fetch(c, "count_queued", params), write=False)
        counts.update((r["use_case"], int(r["n"])) for r in rows)
        return counts

    # -- the worker's path ------------------------------------------------------------------

    async def claim_jobs(self, request: ClaimRequest) -> list[Job]:
        if request.limit <= 0:
            return []
        rows = await self._run(lambda c: _claim(c, request), write=True)
        return claimed(rows, _job_from_row)

    async def dispatch_jobs(self, request: ClaimRequest) -> list[DispatchTicket]:
        jobs = await self.claim_jobs(dataclasses.replace(request, dispatch=True))
        return [DispatchTicket.of(job) for job in jobs]

    async def claim_dispatched(
        self, tickets: Sequence[DispatchTicket], worker_id: str, lease_seconds: float
    ) -> list[Job]:
        if not tickets:
            return []
        params = {
            "tickets": json_dumps(
                [[str(t.job_id), t.attempt, str(t.dispatch_id)] for t in tickets]
            ),
            "worker_id": worker_id,
            "lease_seconds": lease_seconds,
        }
        rows = await self._run(lambda c: _fetch(c, "claim_dispatched", params), write=True)
        return claimed(rows, _job_from_row)

    async def requeue_dispatched(
        self, limit: int, tickets: Sequence[DispatchTicket] = ()
    ) -> list[JobId]:
        params: dict[str, Any]
        if tickets:
            named = json_dumps([[str(t.job_id), str(t.dispatch_id)] for t in tickets])
            query, params = "requeue_dispatches", {"tickets": named}
        elif limit > 0:
            query, params = "requeue_lapsed_dispatches", {"limit": limit}
        else:
            return []
        rows = await self._run(lambda c: _fetch(c, query, params), write=True)
        if rows:
            self._wakeup.set()
        return [JobId(uuid.UUID(r["id"])) for r in rows]

    async def record_outcomes(self, outcomes: Sequence[AttemptOutcome]) -> list[JobId]:
        if not outcomes:
            return []
        params = {
            "outcomes": _outcomes_json(outcomes),
            "max_history": MAX_HISTORY,
            "error_limit": ERROR_MESSAGE_LIMIT,
        }
        rows = await self._run(lambda c: _fetch(c, "record_outcomes", params), write=True)
        changed = _ids_in_order((o.job_id for o in outcomes), rows)
        released = {o.job_id for o in outcomes if o.kind is OutcomeKind.RELEASED}
        if released.intersection(changed):
            self._wakeup.set()
        tell(self._finish_watchers, changed)
        return changed

    async def extend_leases(
        self, claims: Sequence[tuple[JobId, int, LeaseToken]], lease_seconds: float
    ) -> list[LeaseState]:
        if not claims:
            return []
        claims_json = json_dumps([[str(i), a, str(t)] for i, a, t in claims])
        params = {"claims": claims_json, "lease_seconds": lease_seconds}
        rows = await self._run(lambda c: _fetch(c, "extend_leases", params), write=True)
        flags = {str(r["id"]): bool(r["cancel_requested"]) for r in rows}
        held: dict[JobId, LeaseState] = {}
        for job_id, _, _ in claims:
            flag = flags.get(str(job_id))
            if flag is not None:
                held[job_id] = LeaseState(job_id, flag)
        return list(held.values())

    async def record_progress(self, updates: Sequence[ProgressUpdate]) -> list[JobId]:
        if not updates:
            return []
        updates_json = json_dumps(
            [[str(u.job_id), u.attempt, str(u.lease_token), u.percent, u.message] for u in updates]
        )
        params = {"updates": updates_json}
        rows = await self._run(lambda c: _fetch(c, "record_progress", params), write=True)
        return _ids_in_order((u.job_id for u in updates), rows)

    async def reap_expired_leases(self, limit: int) -> list[Job]:
        if limit <= 0:
            return []
        params = {"limit": limit, "max_history": MAX_HISTORY}
        rows = await self._run(lambda c: _fetch(c, "reap_expired_leases", params), write=True)
        jobs = [_job_from_row(r) for r in rows]
        if any(job.status is JobState.PENDING for job in jobs):
            self._wakeup.set()
        tell(self._finish_watchers, [job.id for job in jobs])
        return jobs

    async def cancel_job(
        self, job_id: JobId, tenant_id: str | None = None
    ) -> tuple[Job, bool] | None:
        params = {"id": str(job_id), "tenant_id": tenant_id}
        changed, row = await self._run(
            lambda c: _change_or_get(c, "cancel_job", params), write=True
        )
        if row is None:
            return None
        job = _job_from_row(row)
        if changed and job.status is JobState.RUNNING:
            tell(self._cancel_watchers, [job.id])
        if changed and job.status.is_terminal:
            tell(self._finish_watchers, [job.id])
        return job, changed

    async def retry_job(
        self, job_id: JobId, tenant_id: str | None = None
    ) -> tuple[Job, bool] | None:
        params = {"id": str(job_id), "tenant_id": tenant_id}
        changed, row = await self._run(lambda c: _change_or_get(c, "retry_job", params), write=True)
        if row is None:
            return None
        if changed:
            self._wakeup.set()
        return _job_from_row(row), changed

    # -- the scheduler's path ---------------------------------------------------------------

    async def expire_jobs(self, limit: int) -> list[Job]:
        if limit <= 0:
            return []
        rows = await self._run(lambda c: _fetch(c, "expire_jobs", {"limit": limit}), write=True)
        jobs = [_job_from_row(r) for r in rows]
        tell(self._finish_watchers, [job.id for job in jobs])
        return jobs

    async def delete_finished(self, status: str, older_than_seconds: float, limit: int) -> int:
        _check_terminal(status)
        if limit <= 0:
            return 0
        params = {"status": status, "older_than_seconds": older_than_seconds, "limit": limit}
        rows = await self._run(lambda c: _fetch(c, "delete_finished", params), write=True)
        return len(rows)

    async def set_paused(self, use_case: str, paused: bool) -> UseCaseState:
        params = {"name": use_case, "paused": int(paused)}
        rows = await self._run(lambda c: _fetch(c, "set_paused", params), write=True)
        if not paused:
            self._wakeup.set()
        return _use_case_from_row(rows[0])

    async def list_use_cases(self) -> list[UseCaseState]:
        rows = await self._run(lambda c: _fetch(c, "list_use_cases"), write=False)
        return [_use_case_from_row(r) for r in rows]

    async def try_lead(self, role: str, holder: str, lease_seconds: float) -> bool:
        params = {"role": role, "holder": holder, "lease_seconds": lease_seconds}
        rows = await self._run(lambda c: _fetch(c, "try_lead", params), write=True)
        return bool(rows)

    async def resign(self, role: str, holder: str) -> None:
        params = {"role": role, "holder": holder}
        await self._run(lambda c: _fetch(c, "resign", params), write=True)

    async def current_leader(self, role: str) -> Leader | None:
        rows = await self._run(lambda c: _fetch(c, "current_leader", {"role": role}), write=False)
        if not rows:
            return None
        row = rows[0]
        return Leader(row["holder"], _time(row["since"]), _time(row["expires_at"]))

    async def set_periodic_paused(self, name: str, paused: bool) -> None:
        query = "pause_periodic" if paused else "resume_periodic"
        await self._run(lambda c: _fetch(c, query, {"name": name}), write=True)

    async def paused_periodic(self) -> set[str]:
        rows = await self._run(lambda c: _fetch(c, "paused_periodic"), write=False)
        return {r["name"] for r in rows}

    # -- the registry of processes ---------------------------------------------------------

    async def register_process(self, info: ProcessInfo, ttl_seconds: float) -> None:
        params = {
            **info.to_json(),
            "use_cases": json.dumps(list(info.use_cases)),
            "ttl_seconds": ttl_seconds,
        }

        async def write(conn: aiosqlite.Connection) -> None:
            await _fetch(conn, "delete_lapsed_processes")
            await _fetch(conn, "register_process", params)

        await self._run(write, write=True)

    async def beat_process(self, process_id: str, jobs_held: int, ttl_seconds: float) -> bool:
        params = {"id": process_id, "jobs_held": jobs_held, "ttl_seconds": ttl_seconds}
        rows = await self._run(lambda c: _fetch(c, "beat_process", params), write=True)
        return bool(rows)

    async def remove_process(self, process_id: str) -> None:
        await self._run(lambda c: _fetch(c, "remove_process", {"id": process_id}), write=True)

    async def list_processes(self) -> list[LiveProcess]:
        rows = await self._run(lambda c: _fetch(c, "list_processes"), write=False)
        return [live_process(r, json.loads(r["use_cases"]), _time) for r in rows]

    async def last_periodic_tick(self, name: str) -> datetime | None:
        rows = await self._run(
            lambda c: _fetch(c, "last_periodic_tick", {"name": name}), write=False
        )
        return next((_time(r["last_tick"]) for r in rows), None)

    async def advance_periodic(self, name: str, tick: datetime) -> bool:
        params = {"name": name, "tick": _epoch(tick)}
        rows = await self._run(lambda c: _fetch(c, "advance_periodic", params), write=True)
        return bool(rows)

    # -- webhooks ---------------------------------------------------------------------------

    async def create_webhook_deliveries(
        self, limit: int, max_attempts: int, within_seconds: float | None = None
    ) -> int:
        if limit <= 0:
            return 0
        params = {"limit": limit, "max_attempts": max_attempts, "within_seconds": within_seconds}
        rows = await self._run(lambda c: _fetch(c, "create_webhook_deliveries", params), write=True)
        return len(rows)

    async def lease_webhook_deliveries(
        self, limit: int, lease_seconds: float
    ) -> list[WebhookDelivery]:
        if limit <= 0:
            return []
        params = {"limit": limit, "lease_seconds": lease_seconds}
        rows = await self._run(lambda c: _fetch(c, "lease_webhook_deliveries", params), write=True)
        leased = [_delivery_from_row(r) for r in rows]
        return [d for d in leased if d.status is DeliveryStatus.PENDING]

    async def record_webhook_attempt(self, outcome: DeliveryOutcome) -> bool:
        params = {
            "id": str(outcome.delivery_id),
            "attempt": outcome.attempt,
            "lease_token": str(outcome.lease_token),
            "result": outcome.result.value,
            "record": json_dumps(outcome.record.to_stored()),
            "delay": outcome.retry_delay_seconds,
        }
        rows = await self._run(lambda c: _fetch(c, "record_webhook_attempt", params), write=True)
        return bool(rows)

    async def get_webhook_deliveries(self, job_id: JobId) -> list[WebhookDelivery]:
        params = {"job_id": str(job_id)}
        rows = await self._run(lambda c: _fetch(c, "get_webhook_deliveries", params), write=False)
        return [_delivery_from_row(r) for r in rows]

    async def job_gauges(self, cap: int) -> JobGauges:
        return await self._run(lambda c: _job_gauges(c, cap), write=False)

    async def stats(self, tenant_id: str | None = None, with_counts: bool = True) -> Stats:
        return await self._run(lambda c: _stats(c, tenant_id, with_counts), write=False)

    def watch_cancellations(self, callback: Callable[[JobId], None]) -> None:
        """Told of cancellations asked through this store object only: SQLite cannot
        notify other connections, whose workers learn it when they renew their leases."""
        self._cancel_watchers.append(callback)

    async def watch_finished(self, callback: Callable[[JobId], None]) -> bool:
        if callback not in self._finish_watchers:
            self._finish_watchers.append(callback)
        return False  # other processes writing the same file are not heard

    async def wait_for_jobs(self, timeout: float) -> None:
        """Wakes on this store's own inserts and released jobs only, or after ``timeout``
        seconds; jobs other processes insert are found by the caller's polling."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._wakeup.wait(), timeout)
        self._wakeup.clear()

    # -- running operations -----------------------------------------------------------------

    async def _run(self, work: Work[T], *, write: bool) -> T:
        """Run ``work`` alone on the connection, in a write transaction when ``write``;
        driver errors leave this method as our own errors."""
        async with self._lock:
            conn = self._conn
            if conn is None:
                raise StoreError("the store is not open; call open() first")
            with _translated_errors():
                if not write:
                    return await self._retrying(conn, work)
                return await self._retrying(conn, lambda c: _in_transaction(c, work))

    async def _retrying(self, conn: aiosqlite.Connection, work: Work[T]) -> T:
        """Run ``work`` again while the file stays locked, ``lock_retries`` times at most."""
        attempt = 0
        while True:
            try:
                return await work(conn)
            except sqlite3.OperationalError as exc:
                if _error_code(exc) not in _LOCKED_CODES or attempt >= self._retries:
                    raise
            pause = self._pause * 2**attempt * random.uniform(0.5, 1.5)
            attempt += 1
            log.debug("SQLite file %r is locked; retry %d in %.3f s", self.path, attempt, pause)
            await asyncio.sleep(pause)

    # -- the dashboard's rollup (migration 0013) ---------------------------------------------

    async def roll_up_finished(self, from_seconds: float, to_seconds: float = 0.0) -> int:
        return await self._run(lambda c: _roll_up(c, from_seconds, to_seconds), write=True)

    async def rolled_up(self) -> tuple[float, float] | None:
        async def work(conn: aiosqlite.Connection) -> tuple[float, float] | None:
            span = await _rolled_span(conn)
            if span is None:
                return None
            now = await _now(conn)
            return now - span[0], now - span[1]

        return await self._run(work, write=False)

    async def delete_rollup(self, older_than_seconds: float) -> int:
        async def work(conn: aiosqlite.Connection) -> int:
            before = await _now(conn) - older_than_seconds
            return len(await _fetch(conn, "delete_rollup", {"before": before}))

        return await self._run(work, write=True)

    async def read_rollup(self, tenant_id: str | None, window_seconds: float) -> RollupWindow:
        return await self._run(lambda c: _read_rollup(c, tenant_id, window_seconds), write=False)


def _probe(path: str) -> None:
    """Open and close the file (creating it if missing); raises what opening raises."""
    sqlite3.connect(path).close()


async def _in_transaction(conn: aiosqlite.Connection, work: Work[T]) -> T:
    """``work`` inside BEGIN IMMEDIATE ... COMMIT; rolled back on any error or cancel."""
    if conn.in_transaction:  # left open by a cancelled operation whose rollback was lost
        await _rollback(conn)
    try:  # BEGIN too: a cancel while it is queued must still be followed by a ROLLBACK
        await _fetch(conn, "begin_immediate")
        result = await work(conn)
        await _fetch(conn, "commit")
    except BaseException:
        await asyncio.shield(_rollback(conn))
        raise
    return result


async def _rollback(conn: aiosqlite.Connection) -> None:
    with contextlib.suppress(sqlite3.Error, ValueError):
        await _fetch(conn, "rollback")


async def _fetch(
    conn: aiosqlite.Connection, query: str, params: dict[str, Any] | None = None
) -> list[sqlite3.Row]:
    """Run a named query to the end (so it holds no lock afterwards) and return its rows."""
    rows: Iterable[sqlite3.Row] = await conn.execute_fetchall(QUERIES[query], params or {})
    return list(rows)


@contextlib.contextmanager
def _translated_errors() -> Iterator[None]:
    try:
        yield
    except UnicodeError as exc:  # a str the driver cannot encode: a lone surrogate
        raise StoreRefusedError(f"SQLite cannot store this text: {exc}") from exc
    except sqlite3.Error as exc:
        if isinstance(exc, sqlite3.IntegrityError | sqlite3.DataError):
            raise StoreRefusedError(f"SQLite refused a value: {exc}") from exc
        if "no such table" in str(exc):
            raise SchemaMissingError(
                "the jobs table does not exist; run `async-jobs migrate`"
            ) from exc
        if isinstance(exc, sqlite3.OperationalError) and _error_code(exc) in _UNAVAILABLE_CODES:
            raise StoreUnavailableError(f"SQLite is unavailable: {exc}") from exc
        raise StoreError(f"SQLite error: {exc}") from exc


def _error_code(exc: sqlite3.Error) -> int:
    """The primary result code (``SQLITE_BUSY`` ...) of a driver error, 0 when unknown."""
    code = getattr(exc, "sqlite_errorcode", None)
    if isinstance(code, int):
        return code & 0xFF
    text = str(exc)
    return _SQLITE_BUSY if "database is locked" in text or "is busy" in text else 0


# -- migrations -----------------------------------------------------------------------------


async def _pending_migrations(conn: aiosqlite.Connection) -> list[str]:
    done: set[str] = set()
    (exists,) = await _fetch(conn, "migrations_table_exists")
    if exists["n"]:
        done = {str(r["name"]) for r in await _fetch(conn, "migrations_applied")}
    return [name for name, _ in load_migrations(MIGRATIONS_PACKAGE) if name not in done]


async def _apply_migrations(conn: aiosqlite.Connection) -> list[str]:
    """Apply the migrations not yet recorded, inside the caller's write transaction (which
    also keeps a concurrent ``migrate`` in another process out until it commits)."""
    await _fetch(conn, "migrations_table")
    done = {str(r["name"]) for r in await _fetch(conn, "migrations_applied")}
    applied_now: list[str] = []
    for name, sql in load_migrations(MIGRATIONS_PACKAGE):
        if name in done:
            continue
        for statement in split_statements(sql):
            await conn.execute_fetchall(statement)
        await _fetch(conn, "migration_record", {"name": name})
        applied_now.append(name)
    return applied_now


def split_statements(script: str) -> list[str]:
    """The statements of a migration file, one by one (``executescript`` would commit the
    open transaction first); ``sqlite3.complete_statement`` knows about strings, comments
    and trigger bodies."""
    statements: list[str] = []
    pending = ""
    for line in script.splitlines(keepends=True):
        pending += line
        if sqlite3.complete_statement(pending):
            statements.append(pending.strip())
            pending = ""
    leftover = [s for s in pending.splitlines() if s.strip() and not s.lstrip().startswith("--")]
    if leftover:
        raise StoreError(f"a migration ends with an unfinished statement: {leftover[0]!r}")
    return statements


# -- enqueue --------------------------------------------------------------------------------


async def _insert_jobs(
    conn: aiosqlite.Connection, jobs: Sequence[NewJob]
) -> list[tuple[Job, bool]]:
    await _check_pending_quotas(conn, jobs)
    params = {"jobs": _jobs_json(jobs), "trace_context": jobs[0].trace_context if jobs else None}
    rows = await _fetch(conn, "insert_jobs", params)
    inserted = {r["id"]: r for r in rows}
    missing = [j for j in jobs if str(j.id) not in inserted]
    existing: dict[tuple[str, str | None], Job] = {}
    if missing:
        keys = json_dumps([[j.tenant_id, j.idempotency_key] for j in missing])
        for existing_row in await _fetch(conn, "get_jobs_by_idempotency_key", {"keys": keys}):
            found = _job_from_row(existing_row)
            existing[(found.tenant_id, found.idempotency_key)] = found
    results: list[tuple[Job, bool]] = []
    for job in jobs:
        row = inserted.get(str(job.id))
        if row is not None:
            results.append((_job_from_insert(job, row), True))
        else:
            held = existing[(job.tenant_id, job.idempotency_key)]
            check_same_request(job, held)  # in the write transaction: a conflict stores nothing
            results.append((held, False))
    return results


async def _check_pending_quotas(conn: aiosqlite.Connection, jobs: Sequence[NewJob]) -> None:
    """Raise ``QuotaExceededError`` if the batch would take a tenant past its max_pending in
    a use case (see ``limits.check_pending``). Run inside the inserting write transaction
    (BEGIN IMMEDIATE), so the count and the insert are atomic against every other insert."""
    bounds = pending_bounds(jobs)
    if not bounds:
        return
    keyed = [[j.tenant_id, j.idempotency_key] for j in jobs if j.idempotency_key is not None]
    taken: set[tuple[str, str]] = set()
    if keyed:
        rows = await _fetch(conn, "existing_idempotency_keys", {"keys": json_dumps(keyed)})
        taken = {(r["tenant_id"], r["idempotency_key"]) for r in rows}
    pairs = json_dumps([list(pair) for pair in bounds])
    waiting = {
        (r["tenant_id"], r["use_case"]): int(r["waiting"])
        for r in await _fetch(conn, "count_waiting", {"pairs": pairs})
    }
    check_pending(jobs, bounds, taken, waiting)


def _jobs_json(jobs: Sequence[NewJob]) -> str:
    """The batch as the JSON array ``insert_jobs`` unnests (column order documented there)."""
    return json_dumps(
        [
            [
                str(j.id),
                j.tenant_id,
                j.use_case,
                j.type,
                j.payload_json,
                j.priority.value,
                j.max_attempts,
                j.delay_seconds,
                None if j.run_at is None else _epoch(j.run_at),
                j.delay_tolerance_seconds,
                j.timeout_seconds,
                j.idempotency_key,
                j.webhook_url,
                None if j.backoff is None else json_dumps(j.backoff.to_json()),
                _epoch_or_none(j.expires_at),
                # The id's time to the millisecond below, as this store keeps its times
                # (counted in whole milliseconds, no float rounding on the way): ordered by
                # (created_at, id), the jobs are in the order of their ids.
                (j.created_at - _UNIX_EPOCH) // _MILLISECOND / 1000,
            ]
            for j in jobs
        ]
    )


def _job_from_insert(new: NewJob, row: sqlite3.Row) -> Job:
    return new.stored(_time(row["run_at"]), _time(row["deadline_at"]), _time(row["created_at"]))


# -- the claim ------------------------------------------------------------------------------


async def _claim(conn: aiosqlite.Connection, request: ClaimRequest) -> list[sqlite3.Row]:
    """The claim, in the caller's write transaction (BEGIN IMMEDIATE: no other claimer
    counts or takes anything until it commits). Lists the (use case, tenant) pairs with
    pending jobs, counts the slots they hold (in use cases with a cap or a quota only: the
    others are never counted) and reads their rate buckets, lets ``plan_claim`` choose
    among each pair's first due jobs (``_choose``), starts the chosen jobs and writes back
    the buckets they drew from. The statements are in ``queries.sql``
    (claim_groups ... save_buckets)."""
    now = await _now(conn)
    limits = request.limits
    await _fetch(conn, "claim_undelay", {"now": now})
    params: dict[str, Any] = {"use_cases": json_dumps(list(request.use_cases)), "now": now}
    pairs = [(r["use_case"], r["tenant_id"]) for r in await _fetch(conn, "claim_groups", params)]
    if not pairs:
        return []
    guarded = sorted({use_case for use_case, _ in pairs if limits.guarded(use_case)})
    active: dict[tuple[str, str], int] = {}
    if guarded:
        params = {"use_cases": json_dumps(guarded)}
        for row in await _fetch(conn, "claim_active", params):
            active[(row["use_case"], row["tenant_id"])] = int(row["n"])
    buckets: dict[tuple[str, str], tuple[float, float]] = {}
    rated = rated_pairs(limits, pairs)
    if rated:
        keys = json_dumps([[tenant, use_case] for use_case, tenant in rated])
        for row in await _fetch(conn, "claim_buckets", {"pairs": keys}):
            pair = (row["use_case"], row["tenant_id"])
            buckets[pair] = (row["tokens"], now - row["refilled_at"])
    budget = claim_budget(limits, pairs, active, buckets)
    chosen = await _choose(conn, request, pairs, budget, now)
    if not chosen:
        return []
    params = {
        "rowids": json_dumps([c.job_id for c in chosen]),
        "now": now,
        "worker_id": request.worker_id,
        "lease_seconds": request.lease_seconds,
        "dispatch": request.dispatch,
    }
    claimed = await _fetch(conn, "claim_jobs", params)
    spent = budget.spent((r["use_case"], r["tenant_id"]) for r in claimed)
    if spent:
        left = json_dumps([[tenant, uc, tokens] for (uc, tenant), tokens in spent])
        await _fetch(conn, "save_buckets", {"buckets": left, "now": now})
    return claimed


async def _choose(
    conn: aiosqlite.Connection,
    request: ClaimRequest,
    pairs: Sequence[tuple[str, str]],
    budget: ClaimBudget,
    now: float,
) -> list[Candidate]:
    """``plan_claim`` over the pairs' due jobs, walking each pair only as far as it needs.

    A pair is walked for its fair share of its use case's slots and of the claim's limit,
    plus one, at first. The
    plan is then exact unless a pair had all it was asked for, more left, and its last one
    chosen: such pairs (one tenant's critical jobs among others' medium ones) are walked
    again twice as far, and the plan made again. (Each pair's keys rise along its list, and
    the use case's and the claim's cuts each keep the lowest keys: once a pair's last job
    seen is left out, none of its later ones could be in.)"""
    takes = {pair: take for pair in pairs if (take := budget.take(pair, request.limit)) > 0}
    per_use_case = Counter(use_case for use_case, _ in takes)
    asked: dict[tuple[str, str], int] = {}
    for pair, take in takes.items():
        slots = min(request.limit, budget.free[pair[0]])
        share = min(-(-slots // per_use_case[pair[0]]), -(-request.limit // len(takes)))
        asked[pair] = min(take, share + 1)
    groups: dict[tuple[str, str], list[Candidate]] = {}
    chosen: list[Candidate] = []
    walk = dict(asked)
    while walk:
        groups.update(await _candidates(conn, walk, now, request.types))
        chosen = plan_claim(groups, budget.free, budget.allowance, request.limit)
        ids = {c.job_id for c in chosen}
        walk = {
            pair: min(takes[pair], 2 * asked[pair])
            for pair, seen in groups.items()
            if len(seen) == asked[pair] < takes[pair] and seen[-1].job_id in ids
        }
        asked.update(walk)
    return chosen


async def _candidates(
    conn: aiosqlite.Connection,
    walk: dict[tuple[str, str], int],
    now: float,
    types: Sequence[str],
) -> dict[tuple[str, str], list[Candidate]]:
    """The first due jobs of each pair, as many as ``walk`` says, in the pair's order."""
    params = {
        "groups": json_dumps([[uc, tenant, n] for (uc, tenant), n in walk.items()]),
        "now": now,
        "types": json_dumps(list(types)),
    }
    groups: dict[tuple[str, str], list[Candidate]] = {pair: [] for pair in walk}
    for row in await _fetch(conn, "claim_candidates", params):  # by pair, then turn
        candidate = Candidate(
            job_id=row["rid"],  # the rowid: claim_jobs updates by rowid
            use_case=row["use_case"],
            tenant_id=row["tenant_id"],
            rank=row["priority_rank"],
            deadline_at=_time(row["deadline_at"]),
            run_at=_time(row["run_at"]),
            seq=row["rid"],
        )
        groups[(candidate.use_case, candidate.tenant_id)].append(candidate)
    return groups


async def _now(conn: aiosqlite.Connection) -> float:
    """The database clock (epoch seconds, to the millisecond), for a multi-statement step."""
    rows = await _fetch(conn, "now")
    return float(rows[0]["now"])


# -- the scheduler's path -------------------------------------------------------------------


def _check_terminal(status: str) -> None:
    if status not in {s.value for s in JobState if s.is_terminal}:
        raise InvalidJobError(f"only terminal jobs are deleted, not {status!r}", field="status")


def _use_case_from_row(r: sqlite3.Row) -> UseCaseState:
    return UseCaseState(r["name"], bool(r["paused"]), _time_or_none(r["updated_at"]))


async def _job_gauges(conn: aiosqlite.Connection, cap: int) -> JobGauges:
    now = await _now(conn)
    rows = await _fetch(conn, "job_gauges", {"cap": cap, "now": now})
    return job_gauges(rows, lambda r: r["oldest_due_run_at"] and now - r["oldest_due_run_at"])


async def _stats(conn: aiosqlite.Connection, tenant_id: str | None, with_counts: bool) -> Stats:
    """Counts, throughput and latencies of the last hour; the statements run one after the
    other on the one connection, as of one ``now``."""
    now = await _now(conn)
    counts = [
        StatsCount(r["use_case"], r["tenant_id"], r["status"], int(r["n"]))
        for r in await _fetch(conn, "stats_counts", {"tenant_id": tenant_id})
        if with_counts
    ]
    recent = [
        RecentJob(r["status"], r["run_at"], r["deadline_at"], r["started_at"], r["finished_at"])
        for r in await _fetch(conn, "stats_recent", {"since": now - HOUR, "tenant_id": tenant_id})
    ]
    (waiting,) = await _fetch(conn, "stats_waiting", {"now": now, "tenant_id": tenant_id})
    return build_stats(now, counts, recent, int(waiting["overdue"]), waiting["oldest_due_run_at"])


# -- reads and writes -----------------------------------------------------------------------


def _list_params(where: JobFilter, limit: int, after: PageCursor | None) -> dict[str, Any]:
    """Parameters of ``list_jobs``; without a cursor, (+inf, '') comes after every row."""
    return {
        "tenant_id": where.tenant_id,
        "status": where.status.value if where.status else None,
        "use_case": where.use_case,
        "type": where.type,
        "created_after": _epoch_or_none(where.created_after),
        "created_before": _epoch_or_none(where.created_before),
        "priority": where.priority.value if where.priority else None,
        "after_created_at": math.inf if after is None else _epoch(after.created_at),
        "after_id": "" if after is None else str(after.id),
        "limit": limit,
    }


def _scan_params(request: ScanRequest) -> dict[str, Any]:
    """Parameters of ``scan_jobs``: those of ``list_jobs``, with ``created_before`` folded
    into the cursor (both are upper bounds of the walk) and ``created_after`` -inf when unset,
    so that both bound the range of the index the walk reads."""
    params = _list_params(request.where, request.wanted, request.after)
    before = params["created_before"]
    if before is not None and before <= params["after_created_at"]:
        params["after_created_at"], params["after_id"] = before, ""
    if params["created_after"] is None:
        params["created_after"] = -math.inf
    params["wanted"] = params.pop("limit")
    params["budget"] = request.budget
    return params


def _cursor(row: sqlite3.Row) -> PageCursor:
    return PageCursor(_time(row["created_at"]), JobId(uuid.UUID(row["id"])))


def _outcomes_json(outcomes: Sequence[AttemptOutcome]) -> str:
    """The batch as the JSON array ``record_outcomes`` unnests (columns documented there)."""
    return json_dumps(
        [
            [
                str(o.job_id),
                o.attempt,
                str(o.lease_token),
                o.kind.value,
                result_json(o),
                None if o.error is None else json_dumps(o.error.to_json()),
                o.retry_delay_seconds,
            ]
            for o in outcomes
        ]
    )


async def _change_or_get(
    conn: aiosqlite.Connection, query: str, params: dict[str, Any]
) -> tuple[bool, sqlite3.Row | None]:
    """Run a one-job ``query`` (``cancel_job``, ``retry_job``); when it matches nothing,
    read the job as it stands, in the same transaction. Returns (changed, row or None)."""
    rows = await _fetch(conn, query, params)
    if rows:
        return True, rows[0]
    rows = await _fetch(conn, "get_job", params)
    return False, next(iter(rows), None)


def _ids_in_order(asked: Iterable[JobId], rows: Iterable[sqlite3.Row]) -> list[JobId]:
    """The ids SQLite returned, once each, in the order the caller gave them."""
    changed = {str(r["id"]) for r in rows}
    result: dict[JobId, None] = {}
    for job_id in asked:
        if str(job_id) in changed:
            result[job_id] = None
    return list(result)


def _job_from_row(r: sqlite3.Row) -> Job:
    percent = r["progress_percent"]
    token = r["lease_token"]
    backoff = r["backoff"]
    dispatch_id = r["dispatch_id"]
    return Job(
        id=JobId(uuid.UUID(r["id"])),
        tenant_id=r["tenant_id"],
        use_case=r["use_case"],
        type=r["type"],
        payload=json.loads(r["payload"]),
        priority=Priority(r["priority"]),
        status=JobState(r["status"]),
        attempts=r["attempts"],
        max_attempts=r["max_attempts"],
        run_at=_time(r["run_at"]),
        delay_tolerance_seconds=r["delay_tolerance_seconds"],
        deadline_at=_time(r["deadline_at"]),
        timeout_seconds=r["timeout_seconds"],
        idempotency_key=r["idempotency_key"],
        webhook_url=r["webhook_url"],
        progress=None if percent is None else Progress(percent, r["progress_message"]),
        result=_json_or_none(r["result"]),
        error=JobError.from_json(_json_or_none(r["error"])),
        created_at=_time(r["created_at"]),
        updated_at=_time(r["updated_at"]),
        started_at=_time_or_none(r["started_at"]),
        finished_at=_time_or_none(r["finished_at"]),
        worker_id=r["worker_id"],
        lease_token=None if token is None else LeaseToken(uuid.UUID(token)),
        lease_expires_at=_time_or_none(r["lease_expires_at"]),
        cancel_requested=bool(r["cancel_requested"]),
        reason=r["reason"],
        history=[AttemptRecord.from_stored(h) for h in json.loads(r["history"])],
        backoff=None if backoff is None else Backoff.from_json(json.loads(backoff)),
        expires_at=_time_or_none(r["expires_at"]),
        dispatch_id=None if dispatch_id is None else uuid.UUID(dispatch_id),
        dispatch_expires_at=_time_or_none(r["dispatch_expires_at"]),
        trace_context=r["trace_context"],
    )


def _delivery_from_row(r: sqlite3.Row) -> WebhookDelivery:
    token = r["lease_token"]
    return WebhookDelivery(
        id=DeliveryId(uuid.UUID(r["id"])),
        job_id=uuid.UUID(r["job_id"]),
        tenant_id=r["tenant_id"],
        url=r["url"],
        event=r["event"],
        job_finished_at=_time(r["job_finished_at"]),
        status=DeliveryStatus(r["status"]),
        attempts=r["attempts"],
        max_attempts=r["max_attempts"],
        next_attempt_at=_time(r["next_attempt_at"]),
        created_at=_time(r["created_at"]),
        lease_token=None if token is None else uuid.UUID(token),
        log=tuple(DeliveryAttempt.from_stored(a) for a in json.loads(r["attempt_log"])),
    )


def _json_or_none(text: str | None) -> Any:
    return None if text is None else json.loads(text)


# -- time -----------------------------------------------------------------------------------


_UNIX_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MILLISECOND = timedelta(milliseconds=1)


def _time(epoch_seconds: float) -> datetime:
    """Stored unix epoch seconds as an aware UTC datetime."""
    return datetime.fromtimestamp(epoch_seconds, UTC)


def _time_or_none(epoch_seconds: float | None) -> datetime | None:
    return None if epoch_seconds is None else _time(epoch_seconds)


def _epoch(value: datetime) -> float:
    """A datetime as unix epoch seconds; a naive one is taken to be UTC."""
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    return value.timestamp()


def _epoch_or_none(value: datetime | None) -> float | None:
    return None if value is None else _epoch(value)


# -- the dashboard's rollup -----------------------------------------------------------------


async def _roll_up(conn: aiosqlite.Connection, from_seconds: float, to_seconds: float) -> int:
    """Replace the rollup rows of the minutes from ``from_seconds`` ago to ``to_seconds``
    ago, aggregated here (``domain.rollup.roll_up``) from the jobs that ended in them."""
    now = await _now(conn)
    lo = (now - from_seconds) // MINUTE * MINUTE
    hi = (now - to_seconds) // MINUTE * MINUTE + MINUTE
    ended = [
        EndedJob(
            minute=_time(r["finished_at"] // MINUTE * MINUTE),
            use_case=r["use_case"],
            tenant_id=r["tenant_id"],
            status=r["status"],
            run_seconds=None if r["started_at"] is None else r["finished_at"] - r["started_at"],
            wait_seconds=None if r["started_at"] is None else r["started_at"] - r["run_at"],
            missed_deadline=r["started_at"] is not None and r["started_at"] > r["deadline_at"],
        )
        for r in await _fetch(conn, "rollup_source", {"lo": lo, "hi": hi})
    ]
    await _fetch(conn, "rollup_clear", {"lo": lo, "hi": hi})
    rows = roll_up(ended)
    for row in rows:
        await _fetch(
            conn,
            "rollup_write",
            {
                "tenant_id": row.tenant_id,
                "minute": _epoch(row.minute),
                "use_case": row.use_case,
                "succeeded": row.succeeded,
                "failed": row.failed,
                "cancelled": row.cancelled,
                "deadline_misses": row.deadline_misses,
                "run_hist": json_dumps(row.run_hist),
                "wait_hist": json_dumps(row.wait_hist),
            },
        )
    start, end = extend_rolled(await _rolled_span(conn), lo, min(hi, now))
    await _fetch(conn, "rollup_span_write", {"rolled_from": start, "rolled_until": end})
    return len(rows)


async def _rolled_span(conn: aiosqlite.Connection) -> tuple[float, float] | None:
    rows = await _fetch(conn, "rollup_span")
    return (rows[0]["rolled_from"], rows[0]["rolled_until"]) if rows else None


async def _read_rollup(
    conn: aiosqlite.Connection, tenant_id: str | None, window_seconds: float
) -> RollupWindow:
    now = await _now(conn)
    rows = await _fetch(
        conn, "read_rollup", {"tenant_id": tenant_id, "since": now - window_seconds}
    )
    oldest = await _fetch(conn, "oldest_due", {"tenant_id": tenant_id, "now": now})
    return RollupWindow(
        generated_at=_time(now),
        rows=rollup_rows(rows, tenant_id, _time, json.loads),
        oldest_due_seconds={r["use_case"]: max(now - r["run_at"], 0.0) for r in oldest},
    )
