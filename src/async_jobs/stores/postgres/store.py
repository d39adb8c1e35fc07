"""The PostgreSQL store on asyncpg: named queries from ``queries.sql``, a small pool so that
claim, completion and heartbeats need not wait for each other, and a LISTEN connection that
wakes idle workers (polling remains the correctness path)."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import logging
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Sequence
from datetime import datetime
from typing import Any

import asyncpg

from async_jobs.domain.dispatch import DispatchTicket
from async_jobs.domain.errors import (
    AsyncJobsError,
    ConfigurationError,
    InvalidJobError,
    QuotaExceededError,
    SchemaMissingError,
    StoreError,
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
    JobState,
    LeaseState,
    LeaseToken,
    NewJob,
    PageCursor,
    Priority,
    Progress,
    ProgressUpdate,
)
from async_jobs.domain.retry import Backoff
from async_jobs.domain.rollup import ALL_TENANTS, RollupRow, RollupWindow, merge
from async_jobs.domain.scheduling import (
    ActiveCounts,
    FinishedBucket,
    JobGauges,
    Leader,
    Stats,
    StatsCount,
    UseCaseState,
)
from async_jobs.domain.validation import json_dumps, result_json
from async_jobs.domain.webhooks import (
    DeliveryAttempt,
    DeliveryId,
    DeliveryOutcome,
    DeliveryStatus,
    WebhookDelivery,
)
from async_jobs.domain.workers import LiveProcess, ProcessInfo, ProcessKind
from async_jobs.stores.grouping import Grouped
from async_jobs.stores.sqlfile import load_migrations, load_queries
from async_jobs.stores.watchers import tell

log = logging.getLogger(__name__)

# Statements writing single enqueues at once; more jobs arriving meanwhile wait and go
# together in the next statement (see ``stores.grouping``).
GROUP_WRITERS = 2
# Connections a worker uses at once (claims, outcomes, heartbeats): opened and prepared by
# ``warm`` before its first job.
WARM_CONNECTIONS = 3
# A batch goes in statements of this many jobs, in one transaction: PostgreSQL writes one
# while the next is drawn (validated) and the jobs of the one before are made. The first
# statement is smaller, so that the database starts sooner.
STATEMENT_JOBS = (50, 250)

QUERIES = load_queries("async_jobs.stores.postgres")
NOTIFY_CHANNEL = "async_jobs_inserted"
CANCEL_CHANNEL = "async_jobs_cancel"
FINISHED_CHANNEL = "async_jobs_finished"
LISTENER_CHECK_SECONDS = 15.0  # an idle LISTEN connection is pinged this often

_UNAVAILABLE = (
    OSError,
    asyncio.TimeoutError,
    asyncpg.PostgresConnectionError,
    asyncpg.CannotConnectNowError,
    asyncpg.InterfaceError,
    asyncpg.AdminShutdownError,
    asyncpg.ConnectionFailureError,
)
# A connection in any of these states is not trusted again.
_BROKEN = (*_UNAVAILABLE, asyncpg.InternalClientError)


class PostgresStore:
    """A ``JobStore`` on PostgreSQL 13+ (asyncpg)."""

    def __init__(
        self,
        dsn: str,
        *,
        min_connections: int = 1,
        max_connections: int = 8,
        connect_timeout: float = 5.0,
    ) -> None:
        self.dsn = dsn
        self._min = min_connections
        self._max = max_connections
        self._connect_timeout = connect_timeout
        self._pool: asyncpg.Pool | None = None
        self._listener: asyncpg.Connection | None = None
        self._listener_checked = 0.0
        self._listener_work: asyncio.Future[bool] | None = None
        self._wakeup = asyncio.Event()
        self._cancel_watchers: list[Callable[[JobId], None]] = []
        self._finish_watchers: list[Callable[[JobId], None]] = []
        self._listening_finished = False
        # One pooled connection kept out of the pool for the next statement that finds it
        # free: one job enqueued at a time (or one read) then skips the pool's acquire and
        # release, which cost about as much as the statement's own client-side work.
        self._kept: asyncpg.Connection | None = None
        self._kept_busy = False
        # Jobs enqueued one by one while others are being written are written together.
        self._grouped = Grouped(self._insert_alone, self._insert_group, writers=GROUP_WRITERS)

    # -- life cycle -------------------------------------------------------------------------

    async def open(self) -> None:
        if self._pool is not None:
            return
        try:
            self._pool = await asyncpg.create_pool(
                self.dsn,
                min_size=self._min,
                max_size=self._max,
                timeout=self._connect_timeout,
                init=_init_connection,
                reset=_reset_connection,
                command_timeout=60,
            )
        except _UNAVAILABLE as exc:
            raise StoreUnavailableError(f"cannot reach PostgreSQL: {exc}") from exc
        except asyncpg.PostgresError as exc:
            raise StoreUnavailableError(f"PostgreSQL refused the connection: {exc}") from exc

    async def close(self) -> None:
        await self._grouped.drain()
        if self._listener_work is not None and not self._listener_work.done():
            with contextlib.suppress(Exception):
                await asyncio.wait_for(asyncio.shield(self._listener_work), 5)
        if self._listener is not None:
            with contextlib.suppress(Exception):
                await self._listener.close(timeout=2)
            self._listener = None
        if self._pool is not None:
            pool, self._pool = self._pool, None
            kept, self._kept = self._kept, None
            if kept is not None and not self._kept_busy:
                with contextlib.suppress(Exception):
                    await pool.release(kept)
            try:
                await asyncio.wait_for(pool.close(), timeout=5)
            except (TimeoutError, *_UNAVAILABLE):
                pool.terminate()

    def _connection(self) -> _Lease:
        """``async with self._connection() as conn``: a pooled connection; driver errors
        leave the block as our own errors, and a connection that failed is closed so that
        the pool replaces it."""
        return _Lease(self)

    async def _give_back(self, pool: asyncpg.Pool, conn: asyncpg.Connection) -> None:
        try:
            await pool.release(conn)
        except Exception:  # a connection we cannot reset is dropped
            conn.terminate()

    # -- schema -----------------------------------------------------------------------------

    async def migrate(self) -> list[str]:
        applied_now: list[str] = []
        async with self._connection() as conn, conn.transaction():
            await conn.execute(QUERIES["migrations_lock"])
            await conn.execute(QUERIES["migrations_table"])
            done = {r["name"] for r in await conn.fetch(QUERIES["migrations_applied"])}
            for name, sql in load_migrations("async_jobs.stores.postgres.migrations"):
                if name in done:
                    continue
                await conn.execute(sql)
                await conn.execute(QUERIES["migration_record"], name)
                applied_now.append(name)
        return applied_now

    async def pending_migrations(self) -> list[str]:
        async with self._connection() as conn:
            done = set()
            if await conn.fetchval(QUERIES["migrations_table_exists"]):
                done = {r["name"] for r in await conn.fetch(QUERIES["migrations_applied"])}
        names = [name for name, _ in load_migrations("async_jobs.stores.postgres.migrations")]
        return [name for name in names if name not in done]

    async def ping(self) -> None:
        async with self._connection() as conn:
            await conn.fetchval(QUERIES["ping"])

    async def warm(self) -> None:
        """Open ``WARM_CONNECTIONS`` pooled connections and run the worker's statements once
        on each, with arguments that change nothing. A new connection's first run of a
        statement looks up the types of its columns and, for the claim, has PostgreSQL
        compile and plan the claim function: 5-30 ms each on a small machine, which the
        first jobs of a new worker waited for (their start latency was 15-45 ms, then 3)."""
        pool = self._pool
        if pool is None:
            raise StoreError("the store is not open; call open() first")
        with _our_errors():
            held: list[asyncpg.Connection] = []
            try:
                for _ in range(min(WARM_CONNECTIONS, self._max)):
                    held.append(await pool.acquire())
                await asyncio.gather(*(_run_worker_statements(conn) for conn in held))
            finally:
                for conn in held:
                    await pool.release(conn)

    # -- enqueue ----------------------------------------------------------------------------

    async def insert_job(self, job: NewJob) -> tuple[Job, bool]:
        if job.idempotency_key is None and job.max_pending is None:
            return await self._grouped.write(job)
        # A job with a key may wait for another transaction holding the same key, and one
        # under a quota for the quota's lock: each goes alone, so that no group waits for it.
        return await self._insert_alone(job)

    async def _insert_alone(self, job: NewJob) -> tuple[Job, bool]:
        async with self._connection() as conn:
            return await insert_job_on(conn, job)

    async def _insert_group(self, jobs: Sequence[NewJob]) -> list[tuple[Job, bool]]:
        async with self._connection() as conn:  # one statement: no transaction needed
            return await insert_jobs_on(conn, jobs, statement_jobs=(len(jobs), len(jobs)))

    async def insert_jobs(self, jobs: Iterable[NewJob]) -> list[tuple[Job, bool]]:
        chunks = _statements(jobs, STATEMENT_JOBS)
        first = next(chunks, None)  # an empty batch touches nothing
        if first is None:
            return []
        async with self._connection() as conn, conn.transaction():
            return await _insert_chunks_on(conn, first, chunks)

    async def insert_jobs_in(
        self, connection: object, jobs: Sequence[NewJob]
    ) -> list[tuple[Job, bool]]:
        conn = await driver_connection(connection)
        if not jobs:
            return []
        with _our_errors():
            async with conn.transaction():  # a savepoint inside the caller's transaction
                return await insert_jobs_on(conn, jobs, text_json=True)

    # -- reads ------------------------------------------------------------------------------

    async def get_job(self, job_id: JobId, tenant_id: str | None = None) -> Job | None:
        async with self._connection() as conn:
            row = await conn.fetchrow(QUERIES["get_job"], job_id, tenant_id)
        return job_from_record(row) if row is not None else None

    async def get_job_by_key(self, tenant_id: str, key: str) -> Job | None:
        async with self._connection() as conn:
            row = await conn.fetchrow(QUERIES["get_job_by_key"], tenant_id, key)
        return job_from_record(row) if row is not None else None

    async def list_jobs(
        self, where: JobFilter, limit: int, after: PageCursor | None = None
    ) -> JobPage:
        async with self._connection() as conn:
            rows = await conn.fetch(
                QUERIES["list_jobs"],
                where.tenant_id,
                where.status.value if where.status else None,
                where.use_case,
                where.type,
                where.created_after,
                where.created_before,
                after.created_at if after else None,
                after.id if after else None,
                limit + 1,
                where.priority.value if where.priority else None,
            )
        items = [job_from_record(r) for r in rows[:limit]]
        more = len(rows) > limit
        cursor = PageCursor(items[-1].created_at, items[-1].id) if more and items else None
        return JobPage(items=items, next_cursor=cursor)

    async def count_jobs(self, where: JobFilter, cap: int) -> int:
        async with self._connection() as conn:
            n: int = await conn.fetchval(
                QUERIES["count_jobs"],
                where.tenant_id,
                where.status.value if where.status else None,
                where.use_case,
                where.type,
                where.created_after,
                where.created_before,
                cap,
                where.priority.value if where.priority else None,
            )
        return n

    async def active_counts(self, tenant_id: str | None, cap: int) -> list[ActiveCounts]:
        async with self._connection() as conn:
            rows = await conn.fetch(QUERIES["active_counts"], tenant_id, cap)
        return [
            ActiveCounts(r["name"], r["paused"], r["pending"], r["queued"], r["running"])
            for r in rows
        ]

    async def count_queued(self, use_cases: Sequence[str], cap: int) -> dict[str, int]:
        counts = dict.fromkeys(use_cases, 0)
        if not counts or cap <= 0:
            return counts
        async with self._connection() as conn:
            rows = await conn.fetch(QUERIES["count_queued"], list(counts), cap)
        counts.update((r["use_case"], r["n"]) for r in rows)
        return counts

    async def finished_per_bucket(
        self, tenant_id: str | None, window_seconds: float, bucket_seconds: float
    ) -> list[FinishedBucket]:
        async with self._connection() as conn:
            rows = await conn.fetch(
                QUERIES["finished_per_bucket"], tenant_id, window_seconds, bucket_seconds
            )
        return [FinishedBucket(r["use_case"], r["status"], r["bucket"], r["n"]) for r in rows]

    # -- the worker's path ------------------------------------------------------------------

    async def claim_jobs(self, request: ClaimRequest) -> list[Job]:
        limits = request.limits
        quotas = limits.quota_rows()
        async with self._connection() as conn:
            rows = await conn.fetch(
                QUERIES["claim_jobs"],
                request.limit,
                list(request.use_cases),
                list(request.types),
                request.worker_id,
                request.lease_seconds,
                limits.default_max_concurrent,
                list(limits.max_concurrent),
                list(limits.max_concurrent.values()),
                [q[0] for q in quotas],
                [q[1] for q in quotas],
                [q[2] for q in quotas],
                [q[3] for q in quotas],
                request.dispatch,
            )
        jobs = [job_from_record(r) for r in rows]
        jobs.sort(key=_dispatch_order)
        return jobs

    async def claim_dispatched(
        self, tickets: Sequence[DispatchTicket], worker_id: str, lease_seconds: float
    ) -> list[Job]:
        if not tickets:
            return []
        async with self._connection() as conn:
            rows = await conn.fetch(
                QUERIES["claim_dispatched"],
                [t.job_id for t in tickets],
                [t.attempt for t in tickets],
                [t.dispatch_id for t in tickets],
                worker_id,
                lease_seconds,
            )
        jobs = [job_from_record(r) for r in rows]
        jobs.sort(key=_dispatch_order)
        return jobs

    async def requeue_dispatched(
        self, limit: int, tickets: Sequence[DispatchTicket] = ()
    ) -> list[JobId]:
        async with self._connection() as conn:
            if tickets:
                rows = await conn.fetch(
                    QUERIES["requeue_dispatches"],
                    [t.job_id for t in tickets],
                    [t.dispatch_id for t in tickets],
                )
            else:
                rows = await conn.fetch(QUERIES["requeue_lapsed_dispatches"], limit)
        return [JobId(r["id"]) for r in rows]

    async def record_outcomes(self, outcomes: Sequence[AttemptOutcome]) -> list[JobId]:
        if not outcomes:
            return []
        columns: tuple[list[Any], ...] = ([], [], [], [], [], [], [])
        for o in outcomes:
            columns[0].append(o.job_id)
            columns[1].append(o.attempt)
            columns[2].append(o.lease_token)
            columns[3].append(o.kind.value)
            columns[4].append(result_json(o))
            columns[5].append(None if o.error is None else json_dumps(o.error.to_json()))
            columns[6].append(o.retry_delay_seconds)
        async with self._connection() as conn:
            rows = await conn.fetch(
                QUERIES["record_outcomes"], *columns, MAX_HISTORY, ERROR_MESSAGE_LIMIT
            )
        return [r["id"] for r in rows]

    async def extend_leases(
        self, claims: Sequence[tuple[JobId, int, LeaseToken]], lease_seconds: float
    ) -> list[LeaseState]:
        if not claims:
            return []
        ids, attempts, tokens = zip(*claims, strict=True)
        async with self._connection() as conn:
            rows = await conn.fetch(
                QUERIES["extend_leases"], list(ids), list(attempts), list(tokens), lease_seconds
            )
        return [LeaseState(r["id"], r["cancel_requested"]) for r in rows]

    async def record_progress(self, updates: Sequence[ProgressUpdate]) -> list[JobId]:
        if not updates:
            return []
        columns: tuple[list[Any], ...] = ([], [], [], [], [])
        for u in updates:
            columns[0].append(u.job_id)
            columns[1].append(u.attempt)
            columns[2].append(u.lease_token)
            columns[3].append(u.percent)
            columns[4].append(u.message)
        async with self._connection() as conn:
            rows = await conn.fetch(QUERIES["record_progress"], *columns)
        return [r["id"] for r in rows]

    async def reap_expired_leases(self, limit: int) -> list[Job]:
        return await self._batch_transition("reap_expired_leases", limit, MAX_HISTORY)

    async def _batch_transition(self, query: str, limit: int, *more: object) -> list[Job]:
        """Run a bounded many-job transition (reaper, expiry); announce the jobs it ended."""
        async with self._connection() as conn:
            rows = await conn.fetch(QUERIES[query], limit, *more)
            jobs = [job_from_record(r) for r in rows]
            await _announce_finished(conn, jobs)
        return jobs

    async def cancel_job(
        self, job_id: JobId, tenant_id: str | None = None
    ) -> tuple[Job, bool] | None:
        return await self._change_or_get("cancel_job", job_id, tenant_id)

    async def retry_job(
        self, job_id: JobId, tenant_id: str | None = None
    ) -> tuple[Job, bool] | None:
        return await self._change_or_get("retry_job", job_id, tenant_id)

    async def _change_or_get(
        self, query: str, job_id: JobId, tenant_id: str | None
    ) -> tuple[Job, bool] | None:
        """Run a one-job transition; when it matches nothing, read the job as it stands.
        Returns the job and whether the transition happened, or None if there is no job."""
        async with self._connection() as conn:
            row = await conn.fetchrow(QUERIES[query], job_id, tenant_id)
            if row is not None:
                job = job_from_record(row)
                await _announce_finished(conn, [job])
                return job, True
            row = await conn.fetchrow(QUERIES["get_job"], job_id, tenant_id)
        return (job_from_record(row), False) if row is not None else None

    # -- the scheduler's path ---------------------------------------------------------------

    async def expire_jobs(self, limit: int) -> list[Job]:
        return await self._batch_transition("expire_jobs", limit)

    async def delete_finished(self, status: str, older_than_seconds: float, limit: int) -> int:
        if status not in {s.value for s in JobState if s.is_terminal}:
            raise InvalidJobError(f"only terminal jobs are deleted, not {status!r}", field="status")
        async with self._connection() as conn:
            done = await conn.execute(QUERIES["delete_finished"], status, older_than_seconds, limit)
        return int(done.rsplit(" ", 1)[-1])

    async def set_paused(self, use_case: str, paused: bool) -> UseCaseState:
        async with self._connection() as conn:
            row = await conn.fetchrow(QUERIES["set_paused"], use_case, paused)
        assert row is not None
        return UseCaseState(row["name"], row["paused"], row["updated_at"])

    async def list_use_cases(self) -> list[UseCaseState]:
        async with self._connection() as conn:
            rows = await conn.fetch(QUERIES["list_use_cases"])
        return [UseCaseState(r["name"], r["paused"], r["updated_at"]) for r in rows]

    async def try_lead(self, role: str, holder: str, lease_seconds: float) -> bool:
        async with self._connection() as conn:
            row = await conn.fetchrow(QUERIES["try_lead"], role, holder, lease_seconds)
        return row is not None

    async def resign(self, role: str, holder: str) -> None:
        async with self._connection() as conn:
            await conn.execute(QUERIES["resign"], role, holder)

    async def current_leader(self, role: str) -> Leader | None:
        async with self._connection() as conn:
            row = await conn.fetchrow(QUERIES["current_leader"], role)
        return None if row is None else Leader(row["holder"], row["since"], row["expires_at"])

    async def set_periodic_paused(self, name: str, paused: bool) -> None:
        async with self._connection() as conn:
            await conn.execute(QUERIES["pause_periodic" if paused else "resume_periodic"], name)

    async def paused_periodic(self) -> set[str]:
        async with self._connection() as conn:
            rows = await conn.fetch(QUERIES["paused_periodic"])
        return {r["name"] for r in rows}

    # -- the registry of processes ---------------------------------------------------------

    async def register_process(self, info: ProcessInfo, ttl_seconds: float) -> None:
        async with self._connection() as conn:
            await conn.execute(QUERIES["delete_lapsed_processes"])
            await conn.execute(
                QUERIES["register_process"],
                info.id,
                info.kind.value,
                info.host,
                info.pid,
                info.version,
                info.concurrency,
                list(info.use_cases),
                ttl_seconds,
            )

    async def beat_process(self, process_id: str, jobs_held: int, ttl_seconds: float) -> bool:
        async with self._connection() as conn:
            row = await conn.fetchrow(QUERIES["beat_process"], process_id, jobs_held, ttl_seconds)
        return row is not None

    async def remove_process(self, process_id: str) -> None:
        async with self._connection() as conn:
            await conn.execute(QUERIES["remove_process"], process_id)

    async def list_processes(self) -> list[LiveProcess]:
        async with self._connection() as conn:
            rows = await conn.fetch(QUERIES["list_processes"])
        return [
            LiveProcess(
                ProcessInfo(
                    r["id"],
                    ProcessKind(r["kind"]),
                    r["host"],
                    r["pid"],
                    r["version"],
                    r["concurrency"],
                    tuple(r["use_cases"]),
                ),
                started_at=r["started_at"],
                heartbeat_at=r["heartbeat_at"],
                expires_at=r["expires_at"],
                jobs_held=r["jobs_held"],
            )
            for r in rows
        ]

    async def last_periodic_tick(self, name: str) -> datetime | None:
        async with self._connection() as conn:
            tick: datetime | None = await conn.fetchval(QUERIES["last_periodic_tick"], name)
        return tick

    async def advance_periodic(self, name: str, tick: datetime) -> bool:
        async with self._connection() as conn:
            row = await conn.fetchrow(QUERIES["advance_periodic"], name, tick)
        return row is not None

    # -- webhooks ---------------------------------------------------------------------------

    async def create_webhook_deliveries(
        self, limit: int, max_attempts: int, within_seconds: float | None = None
    ) -> int:
        if limit <= 0:
            return 0
        async with self._connection() as conn:
            rows = await conn.fetch(
                QUERIES["create_webhook_deliveries"], limit, max_attempts, within_seconds
            )
        return len(rows)

    async def lease_webhook_deliveries(
        self, limit: int, lease_seconds: float
    ) -> list[WebhookDelivery]:
        if limit <= 0:
            return []
        async with self._connection() as conn:
            rows = await conn.fetch(QUERIES["lease_webhook_deliveries"], limit, lease_seconds)
        leased = [delivery_from_record(r) for r in rows]
        return [d for d in leased if d.status is DeliveryStatus.PENDING]

    async def record_webhook_attempt(self, outcome: DeliveryOutcome) -> bool:
        async with self._connection() as conn:
            row = await conn.fetchrow(
                QUERIES["record_webhook_attempt"],
                outcome.delivery_id,
                outcome.attempt,
                outcome.lease_token,
                outcome.result.value,
                outcome.record.to_stored(),
                outcome.retry_delay_seconds,
            )
        return row is not None

    async def get_webhook_deliveries(self, job_id: JobId) -> list[WebhookDelivery]:
        async with self._connection() as conn:
            rows = await conn.fetch(QUERIES["get_webhook_deliveries"], job_id)
        return [delivery_from_record(r) for r in rows]

    async def job_gauges(self, cap: int) -> JobGauges:
        async with self._connection() as conn:
            rows = await conn.fetch(QUERIES["job_gauges"], cap)
        return JobGauges(
            counts={(str(r["state"]), r["use_case"]): r["n"] for r in rows},
            oldest_due_seconds={
                r["use_case"]: max(r["oldest_due_seconds"] or 0.0, 0.0)
                for r in rows
                if r["state"] == "pending"
            },
        )

    async def stats(self, tenant_id: str | None = None, with_counts: bool = True) -> Stats:
        async with self._connection() as conn:
            counts = await conn.fetch(QUERIES["stats_counts"], tenant_id) if with_counts else []
            recent = await conn.fetchrow(QUERIES["stats_recent"], tenant_id)
            waiting = await conn.fetchrow(QUERIES["stats_waiting"], tenant_id)
        assert recent is not None and waiting is not None
        return Stats(
            generated_at=recent["generated_at"],
            counts=[StatsCount(r["use_case"], r["tenant_id"], r["status"], r["n"]) for r in counts],
            finished_last_minute={
                state: recent[f"{state}_minute"] for state in ("succeeded", "failed", "cancelled")
            },
            finished_last_hour={
                state: recent[f"{state}_hour"] for state in ("succeeded", "failed", "cancelled")
            },
            run_seconds=_percentiles(recent["run_seconds"]),
            queue_wait_seconds=_percentiles(recent["wait_seconds"]),
            deadline_misses_last_hour=recent["deadline_misses"],
            overdue_pending=waiting["overdue"],
            oldest_due_age_seconds=waiting["oldest_due_seconds"],
        )

    def watch_cancellations(self, callback: Callable[[JobId], None]) -> None:
        self._cancel_watchers.append(callback)

    async def watch_finished(self, callback: Callable[[JobId], None]) -> bool:
        if callback not in self._finish_watchers:
            self._finish_watchers.append(callback)
        if not await self._ensure_listener():
            return False
        if not self._listening_finished and self._listener is not None:
            try:
                await self._listener.add_listener(FINISHED_CHANNEL, self._on_finished)
            except (*_BROKEN, asyncpg.PostgresError) as exc:
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
        listener = self._listener
        fresh = time.monotonic() - self._listener_checked < LISTENER_CHECK_SECONDS
        if listener is not None and not listener.is_closed() and fresh:
            return True
        if self._listener_work is None or self._listener_work.done():
            self._listener_work = asyncio.ensure_future(self._refresh_listener())
        return await asyncio.shield(self._listener_work)

    async def _refresh_listener(self) -> bool:
        listener = self._listener
        if listener is not None and not listener.is_closed():
            if time.monotonic() - self._listener_checked < LISTENER_CHECK_SECONDS:
                return True
            try:
                await listener.fetchval(QUERIES["ping"], timeout=self._connect_timeout)
                self._listener_checked = time.monotonic()
                return True
            except (*_BROKEN, asyncpg.PostgresError) as exc:
                log.warning("the LISTEN connection stopped answering; making a new one: %s", exc)
                listener.terminate()
                self._listener = None
        try:
            conn = await asyncpg.connect(self.dsn, timeout=self._connect_timeout)
        except (*_UNAVAILABLE, asyncpg.PostgresError) as exc:
            log.warning("cannot LISTEN for new jobs, polling only: %s", exc)
            return False
        try:
            await conn.add_listener(NOTIFY_CHANNEL, self._on_notify)
            await conn.add_listener(CANCEL_CHANNEL, self._on_cancel)
            if self._finish_watchers:  # only where someone waits for outcomes
                await conn.add_listener(FINISHED_CHANNEL, self._on_finished)
            conn.add_termination_listener(self._on_listener_lost)
        except (*_BROKEN, asyncpg.PostgresError) as exc:
            conn.terminate()
            log.warning("cannot LISTEN for new jobs, polling only: %s", exc)
            return False
        self._listener = conn
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
        self._listener = None
        self._wakeup.set()

    # -- the dashboard's rollup (migration 0013) ---------------------------------------------

    async def roll_up_finished(self, from_seconds: float, to_seconds: float = 0.0) -> int:
        async with self._connection() as conn, conn.transaction():
            await conn.execute(QUERIES["jit_off"])
            status: str = await conn.execute(
                QUERIES["roll_up_finished"], float(from_seconds), float(to_seconds)
            )
        return int(status.rsplit(" ", 1)[-1])

    async def delete_rollup(self, older_than_seconds: float) -> int:
        async with self._connection() as conn:
            status: str = await conn.execute(QUERIES["delete_rollup"], float(older_than_seconds))
        return int(status.rsplit(" ", 1)[-1])

    async def read_rollup(self, tenant_id: str | None, window_seconds: float) -> RollupWindow:
        async with self._connection() as conn:
            rows = await conn.fetch(QUERIES["read_rollup"], tenant_id, float(window_seconds))
            oldest = await conn.fetch(QUERIES["oldest_due"], tenant_id)
            now = rows[0]["generated_at"] if rows else await conn.fetchval(QUERIES["now"])
        return RollupWindow(
            generated_at=now,
            rows=[
                RollupRow(
                    r["minute"],
                    r["use_case"],
                    tenant_id or ALL_TENANTS,
                    r["succeeded"],
                    r["failed"],
                    r["cancelled"],
                    r["deadline_misses"],
                    merge([r["run_hist"]]),
                    merge([r["wait_hist"]]),
                )
                for r in rows
            ],
            oldest_due_seconds={r["use_case"]: max(r["seconds"], 0.0) for r in oldest},
        )


def _tell(watchers: Sequence[Callable[[JobId], None]], payload: str) -> None:
    """Tell the watchers of every job id of a notification's payload (comma-separated)."""
    job_ids = []
    for part in payload.split(","):
        try:
            job_ids.append(JobId(uuid.UUID(part)))
        except ValueError:
            continue
    tell(watchers, job_ids)


async def _announce_finished(conn: asyncpg.Connection, jobs: Sequence[Job]) -> None:
    """NOTIFY waiters of the jobs that have ended (record_outcomes does it in its statement)."""
    ended = [str(job.id) for job in jobs if job.status.is_terminal]
    for start in range(0, len(ended), 200):
        await conn.execute(QUERIES["announce_finished"], ",".join(ended[start : start + 200]))


@contextlib.contextmanager
def _our_errors() -> Iterator[None]:
    """Driver errors leave this block as our own errors."""
    try:
        yield
    except Exception as exc:
        _raise_ours(exc)
        raise


def _raise_ours(exc: BaseException) -> None:
    """Raise our own error for a driver error (the one place they are mapped); return for
    any other exception, which the caller lets go on as it is."""
    if isinstance(exc, AsyncJobsError):
        return
    if isinstance(exc, asyncpg.UndefinedTableError):
        raise SchemaMissingError("the jobs table does not exist; run `async-jobs migrate`") from exc
    if isinstance(exc, _BROKEN):
        raise StoreUnavailableError(f"PostgreSQL is unavailable: {exc}") from exc
    if isinstance(exc, asyncpg.PostgresError):
        raise StoreError(f"PostgreSQL error: {exc}") from exc


class _Lease:
    """One ``async with`` block's connection (``PostgresStore._connection``): the store's
    kept connection when it is free, else one from the pool, which becomes the kept one
    when there is none. A class rather than a generator-based context manager: every
    statement of the store goes through it, and the generators' machinery cost 20 us of
    CPU per block here (this class: 4 us), a tenth of a single enqueue's client work."""

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
            _raise_ours(exc)
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
            _raise_ours(failed)
            raise
        if isinstance(exc, Exception):
            _raise_ours(exc)

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
        if isinstance(exc, _BROKEN):
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


async def _run_worker_statements(conn: asyncpg.Connection) -> None:
    """Each statement of a worker's path, with arguments that match no job (see ``warm``)."""
    nothing: list[Any] = []
    await conn.fetch(
        QUERIES["claim_jobs"],
        0,
        nothing,
        nothing,
        "",
        1.0,
        0,
        nothing,
        nothing,
        nothing,
        nothing,
        nothing,
        nothing,
        False,
    )
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


async def insert_job_on(conn: asyncpg.Connection, job: NewJob) -> tuple[Job, bool]:
    """Insert one job on a connection the caller holds. When its idempotency key is taken,
    the job holding it comes back; should that job be deleted between the two statements
    (retention), the insert is tried again. A job under a max_pending quota is counted and
    inserted in one transaction (see ``check_pending_quotas``)."""
    if job.max_pending is not None:
        async with conn.transaction():
            await check_pending_quotas(conn, [job])
            return await _insert_one(conn, job)
    return await _insert_one(conn, job)


async def _insert_one(conn: asyncpg.Connection, job: NewJob) -> tuple[Job, bool]:
    if job.idempotency_key is None:
        row = await conn.fetchrow(QUERIES["insert_job"], *_insert_values(job), job.trace_context)
        assert row is not None  # nothing to conflict with: an error or a row
        return _job_from_insert(job, row), True
    for _ in range(3):  # insert_jobs: the one statement that knows ON CONFLICT
        rows = await conn.fetch(QUERIES["insert_jobs"], *_insert_columns([job]), job.trace_context)
        if rows:
            return _job_from_insert(job, rows[0]), True
        existing = await conn.fetch(
            QUERIES["get_jobs_by_idempotency_key"], job.tenant_id, [job.idempotency_key]
        )
        if existing:
            return job_from_record(existing[0]), False
    raise StoreError(f"idempotency key {job.idempotency_key!r} is contended; try again")


async def insert_jobs_on(
    conn: asyncpg.Connection,
    jobs: Iterable[NewJob],
    text_json: bool = False,
    statement_jobs: tuple[int, int] = STATEMENT_JOBS,
) -> list[tuple[Job, bool]]:
    """Insert on a connection the caller holds, in statements of at most ``statement_jobs``
    jobs (the first, then each next one; the caller owns the transaction that makes several
    of them one); ``text_json`` as for ``job_from_record``."""
    chunks = _statements(jobs, statement_jobs)
    first = next(chunks, None)
    if first is None:
        return []
    return await _insert_chunks_on(conn, first, chunks, text_json)


def _statements(jobs: Iterable[NewJob], sizes: tuple[int, int]) -> Iterator[list[NewJob]]:
    """The jobs in lists of ``sizes[0]``, then of ``sizes[1]``, each drawn only when asked
    for. A list holding a job under a max_pending quota takes every job left, so that the
    quota locks of a batch are all taken by one statement, in order (two batches taking them
    in different orders could deadlock)."""
    remaining = iter(jobs)
    size = sizes[0]
    while chunk := list(itertools.islice(remaining, size)):
        size = sizes[1]
        if any(job.max_pending is not None for job in chunk):
            chunk.extend(remaining)
        yield chunk


async def _insert_chunks_on(
    conn: asyncpg.Connection,
    chunk: list[NewJob],
    more: Iterator[list[NewJob]],
    text_json: bool = False,
) -> list[tuple[Job, bool]]:
    """Write ``chunk`` and then each list of ``more``, one statement each. While PostgreSQL
    works on a statement, this process draws the next list (validating its jobs, when
    ``more`` does) and makes the jobs of the previous statement: the two processors work
    at once instead of in turn. An error while drawing lets the statement in flight finish
    and is raised; the caller's transaction then stores nothing."""
    batch: list[NewJob] = []
    made: list[Job | None] = []  # per job of the batch: as inserted, or None (key taken)
    written: tuple[list[NewJob], list[asyncpg.Record]] | None = None
    while chunk:
        await check_pending_quotas(conn, chunk)
        batch.extend(chunk)
        statement = asyncio.ensure_future(
            conn.fetch(QUERIES["insert_jobs"], *_insert_columns(chunk), chunk[0].trace_context)
        )
        try:
            await asyncio.sleep(0)  # the statement is sent
            if written is not None:
                _make_inserted(*written, made)
            nxt = next(more, [])
        except BaseException:
            await asyncio.wait([statement])
            if not statement.cancelled():
                statement.exception()  # retrieved: the drawing error is the one raised
            raise
        written = (chunk, await statement)
        chunk = nxt
    if written is not None:
        _make_inserted(*written, made)
    return await _with_holders(conn, batch, made, text_json)


def _make_inserted(chunk: list[NewJob], rows: list[asyncpg.Record], made: list[Job | None]) -> None:
    """Append to ``made`` each job of a statement as inserted, or None for a job that has
    no row (its key was taken). The rows come in the order of the jobs; should they not,
    they are matched by id."""
    if len(rows) == len(chunk) and all(r[0] == j.id for r, j in zip(rows, chunk, strict=True)):
        made.extend(map(_job_from_insert, chunk, rows))
        return
    by_id = {r[0]: r for r in rows}
    for job in chunk:
        row = by_id.get(job.id)
        made.append(None if row is None else _job_from_insert(job, row))


async def _with_holders(
    conn: asyncpg.Connection, batch: list[NewJob], made: list[Job | None], text_json: bool
) -> list[tuple[Job, bool]]:
    """Each job of the batch with True if it was inserted, else the job holding its
    idempotency key and False."""
    missing = [j for j, inserted in zip(batch, made, strict=True) if inserted is None]
    if not missing:
        return [(inserted, True) for inserted in made if inserted is not None]
    existing: dict[tuple[str, str | None], Job] = {}
    query = "get_jobs_by_idempotency_key_as_text" if text_json else "get_jobs_by_idempotency_key"
    for tenant in {j.tenant_id for j in missing}:
        keys = [j.idempotency_key for j in missing if j.tenant_id == tenant]
        for row in await conn.fetch(QUERIES[query], tenant, keys):
            found = job_from_record(row, text_json)
            existing[(found.tenant_id, found.idempotency_key)] = found
    results: list[tuple[Job, bool]] = []
    for job, inserted in zip(batch, made, strict=True):
        if inserted is not None:
            results.append((inserted, True))
            continue
        holder = existing.get((job.tenant_id, job.idempotency_key))
        if holder is None:  # deleted between the two statements (retention)
            raise StoreError(f"idempotency key {job.idempotency_key!r} is contended; try again")
        results.append((holder, False))
    return results


async def check_pending_quotas(conn: asyncpg.Connection, jobs: Sequence[NewJob]) -> None:
    """Raise ``QuotaExceededError`` if the jobs would take a tenant past its max_pending in a
    use case. Run inside the inserting transaction: the lock per (tenant, use case), taken
    in sorted order, makes the count and the insert atomic against other inserts, and it is
    held until commit, so a concurrent insert counts these jobs too."""
    bounded: dict[tuple[str, str], list[NewJob]] = {}
    for job in jobs:
        if job.max_pending is not None:
            bounded.setdefault((job.tenant_id, job.use_case), []).append(job)
    for (tenant, use_case), group in sorted(bounded.items()):
        await conn.execute(QUERIES["lock_pending_quota"], tenant, use_case)
        keys = {j.idempotency_key for j in group if j.idempotency_key is not None}
        row = await conn.fetchrow(QUERIES["count_waiting"], tenant, use_case, list(keys))
        assert row is not None
        limit = group[0].max_pending
        assert limit is not None
        new = sum(j.idempotency_key is None for j in group) + len(keys - set(row["existing"]))
        if row["waiting"] + new > limit:
            raise QuotaExceededError(
                f"tenant {tenant!r} has {row['waiting']} jobs waiting in use case "
                f"{use_case!r}; its max_pending is {limit}",
                tenant_id=tenant,
                use_case=use_case,
                max_pending=limit,
            )


def _insert_values(j: NewJob) -> tuple[Any, ...]:
    """The parameters of one job, in the column order of both insert queries."""
    return (
        j.id,
        j.tenant_id,
        j.use_case,
        j.type,
        j.payload_json,
        j.priority,  # a StrEnum: the driver sends it as its text
        j.max_attempts,
        j.delay_seconds,
        j.run_at,
        j.delay_tolerance_seconds,
        j.timeout_seconds,
        j.idempotency_key,
        j.webhook_url,
        None if j.backoff is None else json_dumps(j.backoff.to_json()),
        j.expires_at,
    )


def _insert_columns(jobs: Sequence[NewJob]) -> list[Any]:
    """The batch insert's parameters (see the query insert_jobs): the ids and payloads as
    arrays, then each other column as an array of per-job values, then each as one shared
    value. A column whose value is the same in every job goes as that value and NULL for
    its array, so the driver encodes one value instead of an array of equal ones."""
    columns = list(zip(*map(_insert_values, jobs), strict=True))
    ids, payloads = columns[0], columns[4]
    arrays: list[list[Any] | None] = []
    shared: list[Any] = []
    for column in (*columns[1:4], *columns[5:]):
        first = column[0]
        if column.count(first) == len(column):
            arrays.append(None)
            shared.append(first)
        else:
            arrays.append(list(column))
            shared.append(None)
    return [list(ids), list(payloads), *arrays, *shared]


def _job_from_insert(new: NewJob, row: asyncpg.Record) -> Job:
    """The job an insert statement wrote: its row is (id, run_at, deadline_at, created_at)."""
    return new.stored(row[1], row[2], row[3])


def job_from_record(r: asyncpg.Record, text_json: bool = False) -> Job:
    """A job from a row. ``text_json``: jsonb and uuid columns came as text (see the query
    get_jobs_by_idempotency_key_as_text)."""
    _json = json.loads if text_json else _as_is
    _uuid = _parse_uuid if text_json else _as_is
    percent = r["progress_percent"]
    history = _json(r["history"])
    backoff = r["backoff"] and _json(r["backoff"])
    job = Job(  # positional, in the order of Job's fields: this runs for every job claimed
        JobId(_uuid(r["id"])),
        r["tenant_id"],
        r["use_case"],
        r["type"],
        _json(r["payload"]),
        Priority(r["priority"]),
        JobState(r["status"]),
        r["attempts"],
        r["max_attempts"],
        r["run_at"],
        r["delay_tolerance_seconds"],
        r["deadline_at"],
        r["timeout_seconds"],
        r["idempotency_key"],
        r["webhook_url"],
        None if percent is None else Progress(percent, r["progress_message"]),
        None if r["result"] is None else _json(r["result"]),
        JobError.from_json(r["error"] and _json(r["error"])),
        r["created_at"],
        r["updated_at"],
        r["started_at"],
        r["finished_at"],
        r["worker_id"],
        r["lease_token"] and LeaseToken(_uuid(r["lease_token"])),
        r["lease_expires_at"],
        r["cancel_requested"],
        r["reason"],
        [AttemptRecord.from_stored(h) for h in history] if history else [],
        None if backoff is None else Backoff.from_json(backoff),
        r["expires_at"],
        r.get("dispatch_id") and _uuid(r["dispatch_id"]),
        r.get("dispatch_expires_at"),
    )
    job.trace_context = r.get("trace_context")
    return job


def delivery_from_record(r: asyncpg.Record) -> WebhookDelivery:
    return WebhookDelivery(
        id=DeliveryId(r["id"]),
        job_id=r["job_id"],
        tenant_id=r["tenant_id"],
        url=r["url"],
        event=r["event"],
        job_finished_at=r["job_finished_at"],
        status=DeliveryStatus(r["status"]),
        attempts=r["attempts"],
        max_attempts=r["max_attempts"],
        next_attempt_at=r["next_attempt_at"],
        created_at=r["created_at"],
        lease_token=r["lease_token"],
        log=tuple(DeliveryAttempt.from_stored(a) for a in r["attempt_log"]),
    )


def _percentiles(values: list[float] | None) -> dict[str, float | None]:
    p50, p95, p99 = values or (None, None, None)
    return {"p50": p50, "p95": p95, "p99": p99}


def _as_is(value: Any) -> Any:
    return value


def _parse_uuid(value: str) -> uuid.UUID:
    return uuid.UUID(value)


def _dispatch_order(job: Job) -> tuple[int, Any, Any]:
    return (job.priority.rank, job.deadline_at, job.run_at)


async def _reset_connection(conn: asyncpg.Connection) -> None:
    """Pool connections keep no session state (no LISTEN, no SET), so the default reset
    (a round trip on every release) is not needed; only an abandoned transaction is undone."""
    if conn.is_closed() or not conn.is_in_transaction():
        return
    try:
        await conn.execute(QUERIES["rollback"])
    except (*_BROKEN, asyncpg.PostgresError):
        conn.terminate()  # the pool replaces it


async def _init_connection(conn: asyncpg.Connection) -> None:
    await conn.set_type_codec("jsonb", encoder=json_dumps, decoder=json.loads, schema="pg_catalog")
