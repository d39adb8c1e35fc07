"""The narrow interfaces the core depends on; stores and transports implement them.

Each method is one operation whose name says what happens to which rows. Every write to a
claimed job is fenced by its attempt number and lease token: a method that finds the fence
broken changes nothing and reports it by what it returns.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from datetime import datetime
from typing import Protocol

from async_jobs.domain.dispatch import DispatchTicket
from async_jobs.domain.jobs import (
    AttemptOutcome,
    ClaimRequest,
    Job,
    JobFilter,
    JobId,
    JobPage,
    JobScan,
    LeaseState,
    LeaseToken,
    NewJob,
    PageCursor,
    ProgressUpdate,
    ScanRequest,
)
from async_jobs.domain.rollup import RollupWindow
from async_jobs.domain.scheduling import (
    ActiveCounts,
    JobGauges,
    Leader,
    Stats,
    UseCaseState,
)
from async_jobs.domain.webhooks import DeliveryOutcome, WebhookDelivery
from async_jobs.domain.workers import LiveProcess, ProcessInfo


class JobStore(Protocol):
    """Durable home of jobs; the single source of truth."""

    async def open(self) -> None:
        """Connect; raises ``StoreUnavailableError`` if the store does not answer."""

    async def close(self) -> None: ...

    async def migrate(self) -> list[str]:
        """Create or upgrade the schema; returns the names of the migrations applied now."""

    async def ping(self) -> None:
        """Raise ``StoreUnavailableError`` unless the store answers now."""

    async def pending_migrations(self) -> list[str]:
        """The migrations ``migrate`` would apply now (none: the schema is current)."""

    async def warm(self) -> None:
        """Get ready now for a worker's first jobs (open connections, prepare statements),
        so that they do not wait for it; a store with nothing to prepare does nothing."""

    async def insert_job(self, job: NewJob) -> tuple[Job, bool]:
        """Store one job. Returns the job and True, or, when the tenant already has a job
        with the same idempotency key, that job and False; ``IdempotencyConflictError`` if
        that job was another request (``domain.validation.check_same_request``).

        Every insert honours ``NewJob.max_pending``: the tenant's pending and queued jobs in
        that use case, with the new ones, may not exceed it. The count and the insert are
        atomic against every other insert (``QuotaExceededError`` otherwise, nothing
        stored); a repeated idempotency key is not a new job and is never refused."""

    async def insert_jobs(self, jobs: Iterable[NewJob]) -> list[tuple[Job, bool]]:
        """Store many jobs in one transaction: all or none. ``jobs`` may be made as they are
        drawn (a generator that validates requests): a store may write the first jobs while
        it draws the next, and an error raised while drawing them leaves nothing stored. A
        key held by another request (before, or earlier in the batch) is an
        ``IdempotencyConflictError`` that stores nothing, as any other error."""

    async def insert_jobs_in(
        self, connection: object, jobs: Sequence[NewJob]
    ) -> list[tuple[Job, bool]]:
        """Store jobs inside the caller's open transaction on ``connection`` (a driver
        connection or session of the caller's): they exist, and wake workers, only once the
        caller commits. ``ConfigurationError`` if the store cannot use such a connection."""

    async def get_job(self, job_id: JobId, tenant_id: str | None = None) -> Job | None:
        """One job; with ``tenant_id``, only if it belongs to that tenant."""

    async def get_job_by_key(self, tenant_id: str, key: str) -> Job | None:
        """A tenant's job by its idempotency key (unique per tenant)."""

    async def list_jobs(
        self, where: JobFilter, limit: int, after: PageCursor | None = None
    ) -> JobPage:
        """Newest first (``created_at``, then ``id``), starting after ``after``."""

    async def count_jobs(self, where: JobFilter, cap: int) -> int:
        """How many jobs match ``where``, counting no further than ``cap`` (an answer of
        ``cap`` means "at least"): never a walk of every row."""

    async def scan_jobs(self, request: ScanRequest) -> JobScan:
        """A listing whose work is bounded whatever the filter: walk the jobs newest first
        (``created_at``, then ``id``) from after ``request.after``, reading at most
        ``request.budget`` of them, and return the first ``request.limit`` that match
        ``request.where`` (see ``JobScan``). The walk stops once it has found
        ``request.wanted`` matches, so ``matched`` counts up to ``request.count_to``. It
        reads the tenant's jobs when the filter names one, and within ``created_after`` /
        ``created_before``; a store may walk any index of fewer jobs that holds every match
        (PostgreSQL's of the failed and cancelled jobs, for those states). A filter that
        matches nothing costs ``budget`` rows, not the table: the caller goes on from
        ``searched_to`` if it wants."""

    async def active_counts(self, tenant_id: str | None, cap: int) -> list[ActiveCounts]:
        """Per use case that has pending, queued or running jobs (or was ever paused): those
        counts, each stopping at ``cap``, and whether it is paused; by name. Reads the
        partial indexes of waiting and running jobs only."""

    async def count_queued(self, use_cases: Sequence[str], cap: int) -> dict[str, int]:
        """Jobs ``queued`` (dispatched to a broker, not yet claimed) per named use case, each
        count stopping at ``cap``; every named use case is in the answer (0: none). Reads
        the partial index of queued jobs only (the broker dispatchers' window)."""

    async def claim_jobs(self, request: ClaimRequest) -> list[Job]:
        """Move up to ``request.limit`` due pending jobs to running, each with attempts + 1,
        a fresh lease token and a lease that ends ``request.lease_seconds`` from now by the
        store's clock.

        Only what ``request.limits`` allows starts: per use case, queued + running stays
        within its max_concurrent; per tenant and use case within max_running and the
        max_per_second token bucket; paused use cases and expired jobs (``expires_at``
        passed) are skipped. The counting and the claim are atomic against every other
        claimer. Order: priority; within a priority, tenants take turns (round robin); within
        a tenant, earliest deadline, then earliest run_at."""

    async def dispatch_jobs(self, request: ClaimRequest) -> list[DispatchTicket]:
        """The claim of ``claim_jobs`` (every limit, the same order) for a broker: the jobs
        chosen move from ``pending`` to ``queued`` under a fresh dispatch id whose deadline is
        ``request.lease_seconds`` from now (attempts unchanged, no lease). Returns only their
        tickets, in the claim's order: all a dispatcher sends, so the jobs' rows are not read
        back (``request.dispatch`` is implied)."""

    async def claim_dispatched(
        self, tickets: Sequence[DispatchTicket], worker_id: str, lease_seconds: float
    ) -> list[Job]:
        """Start the jobs that broker messages named: each moves from ``queued`` to
        ``running`` (attempts + 1, a fresh lease token, leased to ``worker_id``) only while it
        is still queued under the ticket's dispatch id, the ticket's attempt is its next one,
        and it has not expired. Any other ticket (a duplicate, a late or forged message, a
        job cancelled meanwhile) changes nothing and is missing from the answer."""

    async def requeue_dispatched(
        self, limit: int, tickets: Sequence[DispatchTicket] = ()
    ) -> list[JobId]:
        """Dispatches that came to nothing go back to ``pending``, to be dispatched again
        (no attempt is counted): with ``tickets``, those jobs (a send that failed), if still
        queued under those dispatches; without, up to ``limit`` jobs whose dispatch lapsed
        by the store's clock. Guarded: a job a worker claimed meanwhile is never touched.
        Returns the ids that went back."""

    async def record_outcomes(self, outcomes: Sequence[AttemptOutcome]) -> list[JobId]:
        """Write the end of many attempts at once. Only jobs still running under the
        outcome's attempt and lease token change; returns the ids that did."""

    async def extend_leases(
        self, claims: Sequence[tuple[JobId, int, LeaseToken]], lease_seconds: float
    ) -> list[LeaseState]:
        """Renew the leases of running jobs (id, attempt, lease token) in one statement;
        returns the jobs still held, each saying whether its cancellation was requested.
        A job missing from the answer was lost and must not be written."""

    async def record_progress(self, updates: Sequence[ProgressUpdate]) -> list[JobId]:
        """Store the progress of running attempts, fenced like outcomes; returns the ids
        that changed."""

    async def reap_expired_leases(self, limit: int) -> list[Job]:
        """Up to ``limit`` running jobs whose lease has expired by the store's clock go
        back to pending (or to failed once their attempts are spent) with the reason
        ``worker_lost``; the expired attempt counts and joins the history. The check and
        the write are one guarded statement, so a job that completed meanwhile is never
        touched. Returns the jobs as written."""

    async def cancel_job(
        self, job_id: JobId, tenant_id: str | None = None
    ) -> tuple[Job, bool] | None:
        """Ask for a job's cancellation: a pending or queued job becomes cancelled at
        once, a running one is flagged (``cancel_requested``) for its worker to stop, a
        terminal one (or a running one already flagged) is left alone. Returns the job as it
        now stands and whether this call changed it, or None if not found."""

    async def retry_job(
        self, job_id: JobId, tenant_id: str | None = None
    ) -> tuple[Job, bool] | None:
        """Send a failed or cancelled job back to pending, due now, with at least one
        attempt left. Returns the job and whether it changed (False: it was in another
        state, or past its ``expires_at``, and was left alone), or None if not found."""

    async def expire_jobs(self, limit: int) -> list[Job]:
        """Up to ``limit`` pending or queued jobs whose ``expires_at`` has passed end
        ``cancelled`` with the reason ``expired``. Returns them as written."""

    async def delete_finished(self, status: str, older_than_seconds: float, limit: int) -> int:
        """Delete up to ``limit`` jobs in the terminal ``status`` that finished more than
        ``older_than_seconds`` ago; never any other job. Returns how many went."""

    async def set_paused(self, use_case: str, paused: bool) -> UseCaseState:
        """Pause or resume dispatching a use case; stored, so it survives restarts."""

    async def list_use_cases(self) -> list[UseCaseState]:
        """Every use case that has jobs or was ever paused, by name."""

    async def try_lead(self, role: str, holder: str, lease_seconds: float) -> bool:
        """Take or keep the leadership of ``role`` for ``lease_seconds`` by the store's
        clock: True if ``holder`` leads now (it did already, or the last leader's lease
        ran out). Atomic: at most one holder leads a role at any time."""

    async def resign(self, role: str, holder: str) -> None:
        """Give up the leadership of ``role`` if ``holder`` has it."""

    async def current_leader(self, role: str) -> Leader | None:
        """Who leads ``role`` now (its lease not run out by the store's clock); None:
        nobody. Reads only."""

    async def register_process(self, info: ProcessInfo, ttl_seconds: float) -> None:
        """Write (or rewrite) the record of a live process, listed until ``ttl_seconds``
        from now by the store's clock unless renewed; records that lapsed are deleted."""

    async def beat_process(self, process_id: str, jobs_held: int, ttl_seconds: float) -> bool:
        """Renew a process's record (and the count of jobs it holds now); False if there is
        none (it lapsed and was deleted: register again)."""

    async def remove_process(self, process_id: str) -> None:
        """Delete a process's record (a clean stop)."""

    async def list_processes(self) -> list[LiveProcess]:
        """The records that have not lapsed, by kind then id."""

    async def last_periodic_tick(self, name: str) -> datetime | None:
        """The last tick of the periodic job ``name`` that was enqueued (None: never)."""

    async def advance_periodic(self, name: str, tick: datetime) -> bool:
        """Record ``tick`` as the last enqueued tick of ``name`` if it is later than the one
        stored (or none is); True if it moved."""

    async def set_periodic_paused(self, name: str, paused: bool) -> None:
        """Pause or resume the periodic job ``name``: while paused, its ticks pass without
        being enqueued (none is made up on resuming). Stored, so it survives restarts."""

    async def paused_periodic(self) -> set[str]:
        """The names of the paused periodic jobs."""

    async def stats(self, tenant_id: str | None = None, with_counts: bool = True) -> Stats:
        """Counts, throughput and latencies (see ``Stats``); with ``tenant_id``, of that
        tenant's jobs only. Without ``with_counts``, ``counts`` is empty and no statement
        counts every job (the dashboard counts with a cap instead)."""

    async def job_gauges(self, cap: int) -> JobGauges:
        """Jobs pending, queued and running per use case, each count stopping at ``cap``
        (an index walk of at most ``cap`` entries per state and use case, never a count of
        the table), and the oldest due pending job's age per use case among those walked."""

    async def create_webhook_deliveries(
        self, limit: int, max_attempts: int, within_seconds: float | None = None
    ) -> int:
        """The webhook outbox: make the missing deliveries, up to ``limit``, oldest ending
        first. Every job in a terminal state with a ``webhook_url`` gets one ``pending``
        delivery (due now, ``max_attempts`` attempts) per ending, keyed by the job's id and
        ``finished_at`` (a job retried by hand that ends again gets a new one). With
        ``within_seconds``, only jobs that ended that recently by the store's clock are
        looked at (the cheap sweep); None looks at all of them. Reads an index of ended
        jobs with a webhook only, never the whole table; safe to run from two processes at
        once (the key is unique). Returns how many deliveries were made."""

    async def lease_webhook_deliveries(
        self, limit: int, lease_seconds: float
    ) -> list[WebhookDelivery]:
        """Up to ``limit`` due ``pending`` deliveries, each leased for its next attempt:
        ``attempts`` + 1, a fresh lease token, and not due again for ``lease_seconds`` (by
        the store's clock), so no other sender takes that attempt; a sender that dies gives
        it back when the lease runs out. A delivery whose attempts were already spent (its
        last sender died unrecorded) ends ``failed`` instead and is not returned. Atomic
        against every other leaser: no attempt is ever handed out twice."""

    async def record_webhook_attempt(self, outcome: DeliveryOutcome) -> bool:
        """Record the end of a leased attempt, fenced by its attempt number and lease
        token: the attempt joins the delivery's log (the latest 50 are kept) and the
        delivery becomes ``delivered``, ``failed``, or (``retry``) ``pending`` again, due
        ``retry_delay_seconds`` from now, or ``failed`` if its attempts are spent. Returns
        False, changing nothing, when the lease no longer holds."""

    async def get_webhook_deliveries(self, job_id: JobId) -> list[WebhookDelivery]:
        """Every delivery of a job, oldest ending first."""

    def watch_cancellations(self, callback: Callable[[JobId], None]) -> None:
        """Call ``callback`` soon after a running job's cancellation is requested, where
        the store can tell (a latency aid: workers also learn it when renewing leases)."""

    async def watch_finished(self, callback: Callable[[JobId], None]) -> bool:
        """Call ``callback`` soon after a job may have ended (a latency aid for callers that
        wait for an outcome: they re-read the job, and re-check now and then regardless).
        Registering the same callback again changes nothing. Returns True when the store
        reports the changes of every process (PostgreSQL: NOTIFY), False when only those
        made through this store object (SQLite)."""

    async def wait_for_jobs(self, timeout: float) -> None:
        """Return when new jobs may be due, or after ``timeout`` seconds. A latency aid
        only: callers still poll."""

    async def roll_up_finished(self, from_seconds: float, to_seconds: float = 0.0) -> int:
        """Recompute the rollup (``domain.rollup``) of every minute from the one that holds
        ``from_seconds`` ago to the one that holds ``to_seconds`` ago (by the store's clock)
        out of the jobs that ended in them: each (minute, use case, tenant) row, and the
        ``ALL_TENANTS`` ones, is replaced, and a row whose jobs are gone is deleted. Reads the
        index of ended jobs over that range only. Safe to run twice or from two processes at
        once (both write the same rows). Returns how many rows were written (PostgreSQL
        does not write again a row that would not change). The span it covered joins the
        one ``rolled_up`` answers (``domain.rollup.extend_rolled``), in the same
        transaction as the rows."""

    async def rolled_up(self) -> tuple[float, float] | None:
        """How long ago (seconds, by the store's clock) the span of time whose ended jobs the
        rollup holds begins and ends, as ``roll_up_finished`` left it; None before the first
        run. A process that starts leading goes on from there (``core.maintenance.Rollup``)
        instead of rolling up again what an earlier leader did."""

    async def delete_rollup(self, older_than_seconds: float) -> int:
        """Delete the rollup rows of minutes that began more than ``older_than_seconds``
        ago; returns how many went."""

    async def read_rollup(self, tenant_id: str | None, window_seconds: float) -> RollupWindow:
        """The rollup rows of the minutes that began within the last ``window_seconds``, of
        ``tenant_id`` (None: the ``ALL_TENANTS`` rows), with the age of the oldest due
        pending job per use case (of that tenant): one index probe per use case."""


class Transport(Protocol):
    """How claimed jobs reach a worker. The store stays the truth."""

    async def start(self) -> None: ...

    async def stop(self) -> None: ...

    async def receive(self, capacity: int, wait_seconds: float, ahead: int = 0) -> list[Job]:
        """Up to ``capacity`` jobs now running under this worker's lease; waits up to
        ``wait_seconds`` for the first one (less if ``wake`` is called). ``ahead``: about
        how many more the worker will ask for soon (its jobs are short); a broker transport
        may read that many messages beyond ``capacity`` and hold them unclaimed, so that the
        next call claims at once instead of reading first."""

    def wake(self) -> None:
        """End a ``receive`` that is waiting for jobs now (the worker is stopping); jobs
        already claimed are still returned, never dropped."""

    def nudge(self, *, requeued: bool) -> None:
        """Slots may have been freed (this worker's outcomes were written): a ``receive``
        that is waiting tries to claim again now instead of at its next poll, when that can
        find something: ``requeued``, some of the jobs went back to pending (a retry, a job
        handed back), or a cap or quota may let another job start now."""

    async def settle(self, outcomes: Sequence[AttemptOutcome]) -> list[JobId]:
        """Record outcomes in the store, then tell the broker (if any) they are done."""

    def forget(self, job_id: JobId) -> None:
        """This worker no longer holds the job (its lease was lost to another): whatever
        the broker still holds for it is done with."""


class Dispatcher(Protocol):
    """Hands due jobs to a broker (run by the leading scheduler only)."""

    async def run_once(self) -> int:
        """Dispatch into every free slot now; returns how many jobs were sent."""

    async def close(self) -> None: ...
