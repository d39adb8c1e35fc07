"""The PostgreSQL store on asyncpg: named queries from ``queries.sql``, a small pool so that
claim, completion and heartbeats need not wait for each other, and a LISTEN connection that
wakes idle workers (polling remains the correctness path).

This module holds the store's operations; beside it, ``connection`` (a connection for each
block, driver errors mapped), ``listener`` (LISTEN/NOTIFY), ``inserts`` (single, grouped and
batched inserts, quota locks) and ``rows`` (rows made into jobs and deliveries)."""

from __future__ import annotations

import asyncio
import contextlib
import operator
from collections.abc import Callable, Iterable, Sequence
from datetime import datetime
from typing import Any

import asyncpg

from async_jobs.domain.dispatch import DispatchTicket
from async_jobs.domain.errors import (
    InvalidJobError,
    StoreError,
    StoreUnavailableError,
)
from async_jobs.domain.jobs import (
    ERROR_MESSAGE_LIMIT,
    MAX_HISTORY,
    AttemptOutcome,
    ClaimRequest,
    Job,
    JobFilter,
    JobId,
    JobPage,
    JobScan,
    JobState,
    LeaseState,
    LeaseToken,
    NewJob,
    PageCursor,
    ProgressUpdate,
    ScanRequest,
    listing_key,
)
from async_jobs.domain.rollup import RollupWindow, extend_rolled
from async_jobs.domain.scheduling import (
    ActiveCounts,
    JobGauges,
    Leader,
    Stats,
    StatsCount,
    UseCaseState,
)
from async_jobs.domain.validation import json_dumps, result_json
from async_jobs.domain.webhooks import (
    DeliveryOutcome,
    DeliveryStatus,
    WebhookDelivery,
)
from async_jobs.domain.workers import LiveProcess, ProcessInfo
from async_jobs.stores.grouping import Grouped
from async_jobs.stores.postgres.connection import (
    UNAVAILABLE,
    Checkout,
    driver_connection,
    init_connection,
    our_errors,
    reset_connection,
    run_worker_statements,
)
from async_jobs.stores.postgres.inserts import (
    STATEMENT_JOBS,
    insert_chunks_on,
    insert_job_on,
    insert_jobs_on,
    statements,
)
from async_jobs.stores.postgres.listener import Listener, announce_finished
from async_jobs.stores.postgres.queries import QUERIES
from async_jobs.stores.postgres.rows import (
    delivery_from_record,
    job_from_record,
    percentiles,
)
from async_jobs.stores.rows import claimed, job_gauges, live_process, rollup_rows
from async_jobs.stores.sqlfile import load_migrations

# Statements writing single enqueues at once; more jobs arriving meanwhile wait and go
# together in the next statement (see ``stores.grouping``).
GROUP_WRITERS = 2
# Connections a worker uses at once (claims, outcomes, heartbeats): opened and prepared by
# ``warm`` before its first job.
WARM_CONNECTIONS = 3


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
        self._listener = Listener(dsn, connect_timeout)
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
                init=init_connection,
                reset=reset_connection,
                command_timeout=60,
            )
        except UNAVAILABLE as exc:
            raise StoreUnavailableError(f"cannot reach PostgreSQL: {exc}") from exc
        except asyncpg.PostgresError as exc:
            raise StoreUnavailableError(f"PostgreSQL refused the connection: {exc}") from exc

    async def close(self) -> None:
        await self._grouped.drain()
        await self._listener.close()
        if self._pool is not None:
            pool, self._pool = self._pool, None
            kept, self._kept = self._kept, None
            if kept is not None and not self._kept_busy:
                with contextlib.suppress(Exception):
                    await pool.release(kept)
            try:
                await asyncio.wait_for(pool.close(), timeout=5)
            except (TimeoutError, *UNAVAILABLE):
                pool.terminate()

    def _connection(self) -> Checkout:
        """``async with self._connection() as conn``: a pooled connection; driver errors
        leave the block as our own errors, and a connection that failed is closed so that
        the pool replaces it."""
        return Checkout(self)

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
        first jobs of a new worker waited for (their start latency was 15-45 ms, then 3).

        Then the connection the store keeps out of its pool (``Checkout``), through the
        checkout every statement takes: another task of the process (the scheduler taking
        the lead, say) may have held it while the others were warmed, and it is the one the
        worker's claims run on while they come one at a time. When only the pooled ones were
        warmed, the first job of a new worker still paid 5-6 ms."""
        pool = self._pool
        if pool is None:
            raise StoreError("the store is not open; call open() first")
        with our_errors():
            held: list[asyncpg.Connection] = []
            try:
                for _ in range(min(WARM_CONNECTIONS, self._max)):
                    held.append(await pool.acquire())
                # Every connection's statements end before any goes back to the pool: a
                # failure on one must not release the others while a statement of theirs is
                # still in flight (the next task to take one found it busy).
                done = await asyncio.gather(
                    *(run_worker_statements(conn) for conn in held), return_exceptions=True
                )
                failed = next((r for r in done if isinstance(r, BaseException)), None)
                if failed is not None:
                    raise failed
            finally:
                for conn in held:
                    await pool.release(conn)
        async with self._connection() as conn:
            await run_worker_statements(conn)

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
        chunks = statements(jobs, STATEMENT_JOBS)
        first = next(chunks, None)  # an empty batch touches nothing
        if first is None:
            return []
        async with self._connection() as conn, conn.transaction():
            return await insert_chunks_on(conn, first, chunks)

    async def insert_jobs_in(
        self, connection: object, jobs: Sequence[NewJob]
    ) -> list[tuple[Job, bool]]:
        conn = await driver_connection(connection)
        if not jobs:
            return []
        with our_errors():
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
        # Planned for its own parameters (custom_plans): a session that lists jobs over and
        # over (an API server's) had made it generic on a small table, a sequential scan and
        # a sort of the whole table it kept once the table had grown (docs/scale.md).
        async with self._connection() as conn, conn.transaction(readonly=True):
            await conn.execute(QUERIES["custom_plans"])
            rows = await conn.fetch(
                QUERIES["list_jobs"],
                *_filter_params(where),
                after.created_at if after else None,
                after.id if after else None,
                limit + 1,
                where.priority.value if where.priority else None,
            )
        items = [job_from_record(r) for r in rows[:limit]]
        return JobPage.of(items, more=len(rows) > limit)

    async def scan_jobs(self, request: ScanRequest) -> JobScan:
        where, after = request.where, request.after
        ended = where.tenant_id is None and where.status in (JobState.FAILED, JobState.CANCELLED)
        async with (
            self._connection() as conn,
            # One snapshot: the page's rows are those of the keys.
            conn.transaction(isolation="repeatable_read", readonly=True),
        ):
            await conn.execute(QUERIES["scan_walk_only"])
            keys = await conn.fetch(
                QUERIES["scan_jobs"],
                *_filter_params(where),
                after.created_at if after else None,
                after.id if after else None,
                request.budget,
                request.wanted,
                where.priority.value if where.priority else None,
                ended,
            )
            hits = [PageCursor(k["created_at"], k["id"]) for k in keys if k["hit"]]
            rows = await conn.fetch(QUERIES["get_jobs"], [h.id for h in hits[: request.limit]])
        items = sorted(map(job_from_record, rows), key=listing_key, reverse=True)
        last = next((PageCursor(k["created_at"], k["id"]) for k in keys if not k["hit"]), None)
        return JobScan.of(items, len(hits), request.wanted, last)

    async def count_jobs(self, where: JobFilter, cap: int) -> int:
        async with self._connection() as conn, conn.transaction(readonly=True):
            await conn.execute(QUERIES["custom_plans"])
            n: int = await conn.fetchval(
                QUERIES["count_jobs"],
                *_filter_params(where),
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

    # -- the worker's path ------------------------------------------------------------------

    async def claim_jobs(self, request: ClaimRequest) -> list[Job]:
        async with self._connection() as conn:
            rows = await conn.fetch(
                QUERIES["claim_jobs"], *_claim_arguments(request), request.dispatch
            )
        return claimed(rows, job_from_record)

    async def dispatch_jobs(self, request: ClaimRequest) -> list[DispatchTicket]:
        async with self._connection() as conn:
            rows = await conn.fetch(QUERIES["dispatch_jobs"], *_claim_arguments(request))
        return [DispatchTicket.after(JobId(r[0]), r[1], r[2]) for r in rows]

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
        return claimed(rows, job_from_record)

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
            await announce_finished(conn, jobs)
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
                await announce_finished(conn, [job])
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
        return [live_process(r, r["use_cases"]) for r in rows]

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
        return job_gauges(rows, operator.itemgetter("oldest_due_seconds"))

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
            run_seconds=percentiles(recent["run_seconds"]),
            queue_wait_seconds=percentiles(recent["wait_seconds"]),
            deadline_misses_last_hour=recent["deadline_misses"],
            overdue_pending=waiting["overdue"],
            oldest_due_age_seconds=waiting["oldest_due_seconds"],
        )

    def watch_cancellations(self, callback: Callable[[JobId], None]) -> None:
        self._listener.watch_cancellations(callback)

    async def watch_finished(self, callback: Callable[[JobId], None]) -> bool:
        return await self._listener.watch_finished(callback)

    async def wait_for_jobs(self, timeout: float) -> None:
        await self._listener.wait_for_jobs(timeout)

    # -- the dashboard's rollup (migration 0013) ---------------------------------------------

    async def roll_up_finished(self, from_seconds: float, to_seconds: float = 0.0) -> int:
        async with self._connection() as conn, conn.transaction():
            await conn.execute(QUERIES["roll_up_plan"])
            span = await conn.fetchrow(QUERIES["rollup_span_lock"])
            row = await conn.fetchrow(
                QUERIES["roll_up_finished"], float(from_seconds), float(to_seconds)
            )
            assert row is not None  # one row, whatever was written
            start, end = extend_rolled(
                None if span is None else (span["rolled_from"], span["rolled_until"]),
                row["rolled_from"],
                row["rolled_until"],
            )
            await conn.execute(QUERIES["rollup_span_write"], start, end)
        return int(row["written"])

    async def rolled_up(self) -> tuple[float, float] | None:
        async with self._connection() as conn:
            row = await conn.fetchrow(QUERIES["rolled_up"])
        return None if row is None else (row["begins_ago"], row["ends_ago"])

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
            rows=rollup_rows(rows, tenant_id),
            oldest_due_seconds={r["use_case"]: max(r["seconds"], 0.0) for r in oldest},
        )


def _filter_params(where: JobFilter) -> tuple[Any, ...]:
    """The parameters of a ``JobFilter``, in the order of the queries list_jobs and
    count_jobs."""
    return (
        where.tenant_id,
        where.status.value if where.status else None,
        where.use_case,
        where.type,
        where.created_after,
        where.created_before,
    )


def _claim_arguments(request: ClaimRequest) -> tuple[Any, ...]:
    """The claim function's parameters but the last (dispatch), in its order (claim.sql)."""
    limits = request.limits
    quotas = limits.quota_rows()
    return (
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
    )
