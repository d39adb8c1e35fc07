"""An in-process store for users' unit tests: the same behaviour as the database stores
(the conformance suite runs it through the same cases), nothing durable.

Its clock is injectable, so a test can move time instead of waiting for it.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import dataclasses
import heapq
import json
import logging
import uuid
from collections.abc import Callable, Iterable, Sequence
from datetime import UTC, datetime, timedelta

from async_jobs.domain.dispatch import DispatchTicket
from async_jobs.domain.errors import InvalidJobError, StoreError
from async_jobs.domain.jobs import (
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
    OutcomeKind,
    PageCursor,
    Progress,
    ProgressUpdate,
    ScanRequest,
    dispatch_order,
    listing_key,
)
from async_jobs.domain.rollup import (
    ALL_TENANTS,
    MINUTE,
    EndedJob,
    RollupRow,
    RollupWindow,
    extend_rolled,
    roll_up,
)
from async_jobs.domain.scheduling import (
    GAUGE_STATES,
    ActiveCounts,
    Candidate,
    JobGauges,
    Leader,
    Stats,
    StatsCount,
    UseCaseState,
    plan_claim,
)
from async_jobs.domain.transitions import (
    LOST_ENTRY_ERROR,
    Chore,
    Facts,
    Transition,
    applied,
    decide,
    lost_error,
)
from async_jobs.domain.validation import check_same_request, result_json
from async_jobs.domain.webhooks import (
    MAX_DELIVERY_LOG,
    AttemptResult,
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
    RecentJob,
    build_stats,
    check_pending,
    claim_budget,
    pending_bounds,
)
from async_jobs.stores.watchers import tell

log = logging.getLogger(__name__)


def _utc_now() -> datetime:
    return datetime.now(UTC)


class MemoryStore:
    """A ``JobStore`` held in a dict; safe within one event loop."""

    def __init__(self, clock: Callable[[], datetime] = _utc_now) -> None:
        self._clock = clock
        self._jobs: dict[JobId, Job] = {}
        self._keys: dict[tuple[str, str], JobId] = {}
        self._wakeup = asyncio.Event()
        self._open = False
        self._cancel_watchers: list[Callable[[JobId], None]] = []
        self._finish_watchers: list[Callable[[JobId], None]] = []
        self._use_cases: dict[str, UseCaseState] = {}
        self._buckets: dict[tuple[str, str], tuple[float, datetime]] = {}  # (use case, tenant)
        self._leaders: dict[str, Leader] = {}
        self._processes: dict[str, LiveProcess] = {}
        self._periodic_paused: set[str] = set()
        self._ticks: dict[str, datetime] = {}
        self._deliveries: dict[DeliveryId, WebhookDelivery] = {}
        # The dashboard's rollup ("migration" 0013): (tenant, minute, use case) -> row.
        self._rollup: dict[tuple[str, datetime, str], RollupRow] = {}
        self._rolled: tuple[float, float] | None = None  # extend_rolled's span

    async def open(self) -> None:
        self._open = True

    async def close(self) -> None:
        self._open = False

    async def migrate(self) -> list[str]:
        return []

    async def pending_migrations(self) -> list[str]:
        return []

    async def ping(self) -> None:
        self._check_open()

    async def warm(self) -> None:
        self._check_open()

    def _check_open(self) -> None:
        if not self._open:
            raise StoreError("the store is not open; call open() first")

    async def insert_job(self, job: NewJob) -> tuple[Job, bool]:
        return (await self.insert_jobs([job]))[0]

    async def insert_jobs(self, jobs: Iterable[NewJob]) -> list[tuple[Job, bool]]:
        self._check_open()
        jobs = list(jobs)
        ids = [new.id for new in jobs]
        if len(set(ids)) != len(ids) or any(i in self._jobs for i in ids):
            raise StoreError("a job with this id already exists; nothing was stored")
        self._check_pending(jobs)
        results: list[tuple[Job, bool]] = []
        keyed: dict[tuple[str, str], Job] = {}  # the batch's own keys, before they are stored
        for new in jobs:
            key = None if new.idempotency_key is None else (new.tenant_id, new.idempotency_key)
            held = self._existing(new) or (keyed.get(key) if key is not None else None)
            if held is not None:
                check_same_request(new, held)  # before anything is stored
                results.append((held, False))
                continue
            job = self._build(new)
            if key is not None:
                keyed[key] = job
            results.append((job, True))
        for job, created in results:
            if created:
                self._jobs[job.id] = job
                if job.idempotency_key is not None:
                    self._keys[(job.tenant_id, job.idempotency_key)] = job.id
        if jobs:
            self._wakeup.set()
        return results

    async def insert_jobs_in(
        self, connection: object, jobs: Sequence[NewJob]
    ) -> list[tuple[Job, bool]]:
        raise no_caller_transaction("memory")

    def _check_pending(self, jobs: Sequence[NewJob]) -> None:
        """max_pending, before anything of the batch is stored (one event loop: nothing
        comes between the count and the insert)."""
        bounds = pending_bounds(jobs)
        if not bounds:
            return
        taken = [
            (j.tenant_id, j.idempotency_key)
            for j in jobs
            if j.idempotency_key is not None and (j.tenant_id, j.idempotency_key) in self._keys
        ]
        waiting: dict[tuple[str, str], int] = {}
        for job in self._jobs.values():
            pair = (job.tenant_id, job.use_case)
            if pair in bounds and job.status in (JobState.PENDING, JobState.QUEUED):
                waiting[pair] = waiting.get(pair, 0) + 1
        check_pending(jobs, bounds, taken, waiting)

    def _existing(self, new: NewJob) -> Job | None:
        if new.idempotency_key is None:
            return None
        found = self._keys.get((new.tenant_id, new.idempotency_key))
        return self._jobs.get(found) if found is not None else None

    def _build(self, new: NewJob) -> Job:
        job = new.stored(*new.times(self._clock()), new.created_at)
        job.payload = json.loads(new.payload_json)  # as a database gives it back: a copy
        return job

    async def get_job(self, job_id: JobId, tenant_id: str | None = None) -> Job | None:
        self._check_open()
        job = self._jobs.get(job_id)
        if job is None or (tenant_id is not None and job.tenant_id != tenant_id):
            return None
        return job

    async def get_job_by_key(self, tenant_id: str, key: str) -> Job | None:
        self._check_open()
        return next(
            (
                job
                for job in self._jobs.values()
                if job.tenant_id == tenant_id and job.idempotency_key == key
            ),
            None,
        )

    async def list_jobs(
        self, where: JobFilter, limit: int, after: PageCursor | None = None
    ) -> JobPage:
        self._check_open()
        rows = sorted(
            (j for j in self._jobs.values() if _matches(j, where, after)),
            key=lambda j: (j.created_at, j.id),
            reverse=True,
        )
        items = rows[:limit]
        return JobPage.of(items, more=len(rows) > limit)

    async def scan_jobs(self, request: ScanRequest) -> JobScan:
        self._check_open()
        where = request.where
        walk = JobFilter(
            tenant_id=where.tenant_id,
            created_after=where.created_after,
            created_before=where.created_before,
        )
        read = heapq.nlargest(
            request.budget,
            (j for j in self._jobs.values() if _matches(j, walk, request.after)),
            key=listing_key,
        )
        hits = [j for j in read if _matches(j, where, None)][: request.wanted]
        full = len(read) == request.budget
        last = PageCursor(read[-1].created_at, read[-1].id) if full else None
        return JobScan.of(hits[: request.limit], len(hits), request.wanted, last)

    async def count_jobs(self, where: JobFilter, cap: int) -> int:
        self._check_open()
        n = 0
        for job in self._jobs.values():
            if n >= cap:
                break
            n += _matches(job, where, None)
        return n

    async def active_counts(self, tenant_id: str | None, cap: int) -> list[ActiveCounts]:
        self._check_open()
        counts: dict[str, collections.Counter[JobState]] = {
            name: collections.Counter() for name in self._use_cases
        }
        for job in self._jobs.values():
            if job.status in (JobState.PENDING, JobState.QUEUED, JobState.RUNNING):
                of = counts.setdefault(job.use_case, collections.Counter())
                if tenant_id is None or job.tenant_id == tenant_id:
                    of[job.status] += 1
        return [
            ActiveCounts(
                name,
                name in self._use_cases and self._use_cases[name].paused,
                min(of[JobState.PENDING], cap),
                min(of[JobState.QUEUED], cap),
                min(of[JobState.RUNNING], cap),
            )
            for name, of in sorted(counts.items())
        ]

    async def count_queued(self, use_cases: Sequence[str], cap: int) -> dict[str, int]:
        self._check_open()
        counts = dict.fromkeys(use_cases, 0)
        if cap <= 0:
            return counts
        for job in self._jobs.values():
            if job.status is JobState.QUEUED and job.use_case in counts:
                counts[job.use_case] = min(cap, counts[job.use_case] + 1)
        return counts

    async def claim_jobs(self, request: ClaimRequest) -> list[Job]:
        """The claim as the SQLite store makes it: each (use case, tenant) offers its first
        due jobs, as many as its budget allows, and ``plan_claim`` chooses."""
        self._check_open()
        if request.limit <= 0:
            return []
        now = self._clock()
        active: dict[tuple[str, str], int] = {}
        due: dict[tuple[str, str], list[Job]] = {}
        seq: dict[JobId, int] = {}
        for job in self._jobs.values():
            pair = (job.use_case, job.tenant_id)
            seq[job.id] = len(seq)
            if job.status in (JobState.QUEUED, JobState.RUNNING):
                active[pair] = active.get(pair, 0) + 1
            elif _claimable(job, request, now) and not self._paused(job.use_case):
                due.setdefault(pair, []).append(job)
        if not due:
            return []
        buckets = {
            pair: (tokens, (now - refilled_at).total_seconds())
            for pair, (tokens, refilled_at) in self._buckets.items()
        }
        budget = claim_budget(request.limits, due, active, buckets)
        groups: dict[tuple[str, str], list[Candidate]] = {}
        for pair, jobs in due.items():
            take = budget.take(pair, request.limit)
            if take > 0:
                jobs.sort(key=dispatch_order)
                groups[pair] = [_candidate(job, seq[job.id]) for job in jobs[:take]]
        chosen = plan_claim(groups, budget.free, budget.allowance, request.limit)
        claimed = [self._start(self._jobs[c.job_id], request, now) for c in chosen]
        for pair, tokens in budget.spent((j.use_case, j.tenant_id) for j in claimed):
            self._buckets[pair] = (tokens, now)
        return claimed

    def _start(self, job: Job, request: ClaimRequest, now: datetime) -> Job:
        if request.dispatch:
            started = dataclasses.replace(
                job,
                status=JobState.QUEUED,
                progress=None,
                dispatch_id=uuid.uuid4(),
                dispatch_expires_at=now + timedelta(seconds=request.lease_seconds),
                updated_at=now,
            )
        else:
            started = _running(job, request.worker_id, request.lease_seconds, now)
        self._jobs[job.id] = started
        return started

    async def dispatch_jobs(self, request: ClaimRequest) -> list[DispatchTicket]:
        jobs = await self.claim_jobs(dataclasses.replace(request, dispatch=True))
        return [DispatchTicket.of(job) for job in jobs]

    async def claim_dispatched(
        self, tickets: Sequence[DispatchTicket], worker_id: str, lease_seconds: float
    ) -> list[Job]:
        self._check_open()
        now = self._clock()
        claimed: list[Job] = []
        for ticket in tickets:
            job = self._jobs.get(ticket.job_id)
            if (
                job is not None
                and job.status is JobState.QUEUED
                and job.dispatch_id == ticket.dispatch_id
                and job.attempts + 1 == ticket.attempt
                and (job.expires_at is None or job.expires_at > now)
            ):
                self._jobs[job.id] = _running(job, worker_id, lease_seconds, now)
                claimed.append(self._jobs[job.id])
        claimed.sort(key=dispatch_order)
        return claimed

    async def requeue_dispatched(
        self, limit: int, tickets: Sequence[DispatchTicket] = ()
    ) -> list[JobId]:
        self._check_open()
        now = self._clock()
        if tickets:
            named = {t.job_id: t.dispatch_id for t in tickets}
            chosen = [
                j
                for j in self._jobs.values()
                if j.status is JobState.QUEUED and named.get(j.id, 0) == j.dispatch_id
            ]
        else:
            lapsed = (
                j
                for j in self._jobs.values()
                if j.status is JobState.QUEUED
                and j.dispatch_expires_at is not None
                and j.dispatch_expires_at < now
            )
            chosen = sorted(lapsed, key=lambda j: j.dispatch_expires_at or now)[: max(limit, 0)]
        for job in chosen:
            self._jobs[job.id] = dataclasses.replace(
                job,
                status=JobState.PENDING,
                dispatch_id=None,
                dispatch_expires_at=None,
                updated_at=now,
            )
        if chosen:
            self._wakeup.set()
        return [job.id for job in chosen]

    def _paused(self, use_case: str) -> bool:
        state = self._use_cases.get(use_case)
        return state is not None and state.paused

    async def record_outcomes(self, outcomes: Sequence[AttemptOutcome]) -> list[JobId]:
        self._check_open()
        now = self._clock()
        written: list[JobId] = []
        for outcome in outcomes:
            job = self._jobs.get(outcome.job_id)
            if job is None or not _holds(job, outcome.attempt, outcome.lease_token):
                continue
            change = decide(Facts.of(job, now), outcome.kind)
            assert change is not None  # held: running under this attempt's lease
            self._jobs[job.id] = _apply(job, change, outcome, now)
            written.append(job.id)
            if outcome.kind is OutcomeKind.RELEASED:
                self._wakeup.set()
        tell(self._finish_watchers, written)
        return written

    async def extend_leases(
        self, claims: Sequence[tuple[JobId, int, LeaseToken]], lease_seconds: float
    ) -> list[LeaseState]:
        self._check_open()
        now = self._clock()
        held: dict[JobId, LeaseState] = {}
        for job_id, attempt, token in claims:
            job = self._jobs.get(job_id)
            if job is None or not _holds(job, attempt, token):
                continue
            self._jobs[job_id] = dataclasses.replace(
                job, lease_expires_at=now + timedelta(seconds=lease_seconds), updated_at=now
            )
            held[job_id] = LeaseState(job_id, job.cancel_requested)
        return list(held.values())

    async def record_progress(self, updates: Sequence[ProgressUpdate]) -> list[JobId]:
        self._check_open()
        now = self._clock()
        changed: dict[JobId, None] = {}
        for update in updates:
            job = self._jobs.get(update.job_id)
            if job is None or not _holds(job, update.attempt, update.lease_token):
                continue
            progress = Progress(update.percent, update.message)
            self._jobs[job.id] = dataclasses.replace(job, progress=progress, updated_at=now)
            changed[job.id] = None
        return list(changed)

    async def reap_expired_leases(self, limit: int) -> list[Job]:
        self._check_open()
        now = self._clock()
        expired = sorted(
            (
                j
                for j in self._jobs.values()
                if j.status is JobState.RUNNING
                and j.lease_expires_at is not None
                and j.lease_expires_at < now
            ),
            key=lambda j: j.lease_expires_at or now,
        )[: max(limit, 0)]
        reaped = [_reap(job, now) for job in expired]
        for job in reaped:
            self._jobs[job.id] = job
        if any(job.status is JobState.PENDING for job in reaped):
            self._wakeup.set()
        tell(self._finish_watchers, [job.id for job in reaped])
        return reaped

    async def cancel_job(
        self, job_id: JobId, tenant_id: str | None = None
    ) -> tuple[Job, bool] | None:
        found = await self._transition(job_id, tenant_id, Chore.CANCEL)
        if found is not None and found[1]:  # else terminal, or running and flagged already
            job = found[0]
            watchers = self._finish_watchers if job.status.is_terminal else self._cancel_watchers
            tell(watchers, [job.id])
        return found

    async def retry_job(
        self, job_id: JobId, tenant_id: str | None = None
    ) -> tuple[Job, bool] | None:
        found = await self._transition(job_id, tenant_id, Chore.RETRY)
        if found is not None and found[1]:
            self._wakeup.set()
        return found

    async def _transition(
        self, job_id: JobId, tenant_id: str | None, chore: Chore
    ) -> tuple[Job, bool] | None:
        """``chore`` done to one job (the tenant's, if named): the job as it stands after,
        and whether it changed; None if there is no such job."""
        job = await self.get_job(job_id, tenant_id)
        if job is None:
            return None
        now = self._clock()
        change = decide(Facts.of(job, now), chore)
        if change is None:
            return job, False
        job = applied(job, change, now)
        self._jobs[job.id] = job
        return job, True

    # -- the scheduler's path ---------------------------------------------------------------

    async def expire_jobs(self, limit: int) -> list[Job]:
        self._check_open()
        now = self._clock()
        expiring = sorted(
            (
                j
                for j in self._jobs.values()
                if j.status in (JobState.PENDING, JobState.QUEUED)
                and j.expires_at is not None
                and j.expires_at < now
            ),
            key=lambda j: j.expires_at or now,
        )[: max(limit, 0)]
        expired = [
            applied(job, change, now)
            for job in expiring
            if (change := decide(Facts.of(job, now), Chore.EXPIRE)) is not None
        ]
        for job in expired:
            self._jobs[job.id] = job
        tell(self._finish_watchers, [job.id for job in expired])
        return expired

    async def delete_finished(self, status: str, older_than_seconds: float, limit: int) -> int:
        self._check_open()
        if status not in {s.value for s in JobState if s.is_terminal}:
            raise InvalidJobError(f"only terminal jobs are deleted, not {status!r}", field="status")
        before = self._clock() - timedelta(seconds=older_than_seconds)
        old = sorted(
            (
                j
                for j in self._jobs.values()
                if j.status.value == status and j.finished_at is not None and j.finished_at < before
            ),
            key=lambda j: j.finished_at or before,
        )[: max(limit, 0)]
        gone = {job.id for job in old}
        for delivery_id in [d.id for d in self._deliveries.values() if d.job_id in gone]:
            del self._deliveries[delivery_id]
        for job in old:
            del self._jobs[job.id]
            if job.idempotency_key is not None:
                self._keys.pop((job.tenant_id, job.idempotency_key), None)
        return len(old)

    async def set_paused(self, use_case: str, paused: bool) -> UseCaseState:
        self._check_open()
        state = UseCaseState(use_case, paused, self._clock())
        self._use_cases[use_case] = state
        if not paused:
            self._wakeup.set()
        return state

    async def list_use_cases(self) -> list[UseCaseState]:
        self._check_open()
        names = {job.use_case for job in self._jobs.values()} | set(self._use_cases)
        return [self._use_cases.get(name) or UseCaseState(name, False) for name in sorted(names)]

    async def try_lead(self, role: str, holder: str, lease_seconds: float) -> bool:
        self._check_open()
        now = self._clock()
        current = self._leaders.get(role)
        if current is not None and current.holder != holder and current.expires_at >= now:
            return False
        since = current.since if current is not None and current.holder == holder else now
        self._leaders[role] = Leader(holder, since, now + timedelta(seconds=lease_seconds))
        return True

    async def resign(self, role: str, holder: str) -> None:
        self._check_open()
        current = self._leaders.get(role)
        if current is not None and current.holder == holder:
            del self._leaders[role]

    async def current_leader(self, role: str) -> Leader | None:
        self._check_open()
        current = self._leaders.get(role)
        return current if current is not None and current.expires_at >= self._clock() else None

    async def set_periodic_paused(self, name: str, paused: bool) -> None:
        self._check_open()
        if paused:
            self._periodic_paused.add(name)
        else:
            self._periodic_paused.discard(name)

    async def paused_periodic(self) -> set[str]:
        self._check_open()
        return set(self._periodic_paused)

    # -- the registry of processes ---------------------------------------------------------

    async def register_process(self, info: ProcessInfo, ttl_seconds: float) -> None:
        self._check_open()
        now = self._clock()
        for lapsed in [p.info.id for p in self._processes.values() if p.expires_at < now]:
            del self._processes[lapsed]
        known = self._processes.get(info.id)
        started = known.started_at if known is not None else now
        held = known.jobs_held if known is not None else 0
        expires = now + timedelta(seconds=ttl_seconds)
        self._processes[info.id] = LiveProcess(info, started, now, expires, held)

    async def beat_process(self, process_id: str, jobs_held: int, ttl_seconds: float) -> bool:
        self._check_open()
        known = self._processes.get(process_id)
        if known is None:
            return False
        now = self._clock()
        self._processes[process_id] = dataclasses.replace(
            known,
            heartbeat_at=now,
            expires_at=now + timedelta(seconds=ttl_seconds),
            jobs_held=jobs_held,
        )
        return True

    async def remove_process(self, process_id: str) -> None:
        self._check_open()
        self._processes.pop(process_id, None)

    async def list_processes(self) -> list[LiveProcess]:
        self._check_open()
        now = self._clock()
        live = [p for p in self._processes.values() if p.expires_at >= now]
        return sorted(live, key=lambda p: (p.info.kind.value, p.info.id))

    async def last_periodic_tick(self, name: str) -> datetime | None:
        self._check_open()
        return self._ticks.get(name)

    async def advance_periodic(self, name: str, tick: datetime) -> bool:
        self._check_open()
        last = self._ticks.get(name)
        if last is not None and tick <= last:
            return False
        self._ticks[name] = tick
        return True

    # -- webhooks ---------------------------------------------------------------------------

    async def create_webhook_deliveries(
        self, limit: int, max_attempts: int, within_seconds: float | None = None
    ) -> int:
        self._check_open()
        now = self._clock()
        made = {(d.job_id, d.job_finished_at) for d in self._deliveries.values()}
        due = sorted(
            (
                j
                for j in self._jobs.values()
                if j.webhook_url is not None
                and j.status.is_terminal
                and j.finished_at is not None
                and (j.id, j.finished_at) not in made
                and (
                    within_seconds is None
                    or j.finished_at >= now - timedelta(seconds=within_seconds)
                )
            ),
            key=lambda j: j.finished_at or now,
        )[: max(limit, 0)]
        for job in due:
            assert job.webhook_url is not None and job.finished_at is not None
            delivery = WebhookDelivery(
                id=DeliveryId(uuid.uuid4()),
                job_id=job.id,
                tenant_id=job.tenant_id,
                url=job.webhook_url,
                event=job.status.value,
                job_finished_at=job.finished_at,
                status=DeliveryStatus.PENDING,
                attempts=0,
                max_attempts=max_attempts,
                next_attempt_at=now,
                created_at=now,
            )
            self._deliveries[delivery.id] = delivery
        return len(due)

    async def lease_webhook_deliveries(
        self, limit: int, lease_seconds: float
    ) -> list[WebhookDelivery]:
        self._check_open()
        now = self._clock()
        due = sorted(
            (
                d
                for d in self._deliveries.values()
                if d.status is DeliveryStatus.PENDING and d.next_attempt_at <= now
            ),
            key=lambda d: d.next_attempt_at,
        )[: max(limit, 0)]
        leased: list[WebhookDelivery] = []
        for delivery in due:
            if delivery.attempts >= delivery.max_attempts:
                spent = dataclasses.replace(
                    delivery, status=DeliveryStatus.FAILED, lease_token=None
                )
                self._deliveries[delivery.id] = spent
                continue
            taken = dataclasses.replace(
                delivery,
                attempts=delivery.attempts + 1,
                lease_token=uuid.uuid4(),
                next_attempt_at=now + timedelta(seconds=lease_seconds),
            )
            self._deliveries[delivery.id] = taken
            leased.append(taken)
        return leased

    async def record_webhook_attempt(self, outcome: DeliveryOutcome) -> bool:
        self._check_open()
        delivery = self._deliveries.get(outcome.delivery_id)
        if (
            delivery is None
            or delivery.status is not DeliveryStatus.PENDING
            or delivery.attempts != outcome.attempt
            or delivery.lease_token != outcome.lease_token
        ):
            return False
        now = self._clock()
        spent = delivery.attempts >= delivery.max_attempts
        if outcome.result is AttemptResult.DELIVERED:
            status = DeliveryStatus.DELIVERED
        elif outcome.result is AttemptResult.FAILED or spent:
            status = DeliveryStatus.FAILED
        else:
            status = DeliveryStatus.PENDING
        next_at = delivery.next_attempt_at
        if outcome.result is AttemptResult.RETRY and not spent:
            next_at = now + timedelta(seconds=outcome.retry_delay_seconds)
        self._deliveries[delivery.id] = dataclasses.replace(
            delivery,
            status=status,
            next_attempt_at=next_at,
            lease_token=None,
            log=(*delivery.log, DeliveryAttempt.from_stored(outcome.record.to_stored()))[
                -MAX_DELIVERY_LOG:
            ],
        )
        return True

    async def get_webhook_deliveries(self, job_id: JobId) -> list[WebhookDelivery]:
        self._check_open()
        return sorted(
            (d for d in self._deliveries.values() if d.job_id == job_id),
            key=lambda d: (d.job_finished_at, d.created_at),
        )

    async def job_gauges(self, cap: int) -> JobGauges:
        self._check_open()
        now = self._clock()
        counts: dict[tuple[str, str], int] = {}
        oldest: dict[str, float] = {}
        for job in self._jobs.values():
            key = (job.status.value, job.use_case)
            if job.status.value not in GAUGE_STATES or counts.get(key, 0) >= cap:
                continue
            counts[key] = counts.get(key, 0) + 1
            if job.status is JobState.PENDING:
                age = max((now - job.run_at).total_seconds(), 0.0)
                oldest[job.use_case] = max(oldest.get(job.use_case, 0.0), age)
        return JobGauges(counts, oldest)

    async def stats(self, tenant_id: str | None = None, with_counts: bool = True) -> Stats:
        self._check_open()
        now = self._clock()
        since = now - timedelta(seconds=HOUR)
        counts: dict[tuple[str, str, str], int] = {}
        recent: list[RecentJob] = []
        overdue = 0
        oldest_due: datetime | None = None
        for job in self._jobs.values():
            if tenant_id is not None and job.tenant_id != tenant_id:
                continue
            key = (job.use_case, job.tenant_id, job.status.value)
            counts[key] = counts.get(key, 0) + 1
            if (job.finished_at is not None and job.finished_at > since) or (
                job.started_at is not None and job.started_at > since
            ):
                recent.append(_recent(job))
            if job.status is JobState.PENDING:
                overdue += job.deadline_at < now
                if job.run_at <= now and (oldest_due is None or job.run_at < oldest_due):
                    oldest_due = job.run_at
        return build_stats(
            now.timestamp(),
            [StatsCount(*key, n) for key, n in counts.items()] if with_counts else [],
            recent,
            overdue,
            None if oldest_due is None else oldest_due.timestamp(),
        )

    def watch_cancellations(self, callback: Callable[[JobId], None]) -> None:
        self._cancel_watchers.append(callback)

    async def watch_finished(self, callback: Callable[[JobId], None]) -> bool:
        if callback not in self._finish_watchers:
            self._finish_watchers.append(callback)
        return True

    async def wait_for_jobs(self, timeout: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._wakeup.wait(), timeout)
        self._wakeup.clear()

    # -- the dashboard's rollup --------------------------------------------------------------

    async def roll_up_finished(self, from_seconds: float, to_seconds: float = 0.0) -> int:
        self._check_open()
        now = self._clock()
        lo, hi = (
            _minute(now - timedelta(seconds=from_seconds)),
            _minute(now - timedelta(seconds=to_seconds)) + timedelta(seconds=MINUTE),
        )
        ended = [
            EndedJob(
                minute=_minute(job.finished_at),
                use_case=job.use_case,
                tenant_id=job.tenant_id,
                status=job.status.value,
                run_seconds=None
                if job.started_at is None
                else (job.finished_at - job.started_at).total_seconds(),
                wait_seconds=None
                if job.started_at is None
                else (job.started_at - job.run_at).total_seconds(),
                missed_deadline=job.started_at is not None and job.started_at > job.deadline_at,
            )
            for job in self._jobs.values()
            if job.status.is_terminal and job.finished_at is not None and lo <= job.finished_at < hi
        ]
        for key in [k for k in self._rollup if lo <= k[1] < hi]:
            del self._rollup[key]
        rows = roll_up(ended)
        for row in rows:
            self._rollup[(row.tenant_id, row.minute, row.use_case)] = row
        self._rolled = extend_rolled(self._rolled, lo.timestamp(), min(hi, now).timestamp())
        return len(rows)

    async def rolled_up(self) -> tuple[float, float] | None:
        self._check_open()
        if self._rolled is None:
            return None
        now = self._clock().timestamp()
        return now - self._rolled[0], now - self._rolled[1]

    async def delete_rollup(self, older_than_seconds: float) -> int:
        self._check_open()
        before = self._clock() - timedelta(seconds=older_than_seconds)
        old = [key for key in self._rollup if key[1] < before]
        for key in old:
            del self._rollup[key]
        return len(old)

    async def read_rollup(self, tenant_id: str | None, window_seconds: float) -> RollupWindow:
        self._check_open()
        now = self._clock()
        since = now - timedelta(seconds=window_seconds)
        tenant = tenant_id or ALL_TENANTS
        rows = sorted(
            (r for (t, minute, _), r in self._rollup.items() if t == tenant and minute >= since),
            key=lambda r: (r.minute, r.use_case),
        )
        oldest: dict[str, float] = {}
        for job in self._jobs.values():
            if job.status is not JobState.PENDING or job.run_at > now:
                continue
            if tenant_id is None or job.tenant_id == tenant_id:
                age = (now - job.run_at).total_seconds()
                oldest[job.use_case] = max(oldest.get(job.use_case, 0.0), age)
        return RollupWindow(now, rows, oldest)


def _minute(at: datetime) -> datetime:
    return at.replace(second=0, microsecond=0)


def _holds(job: Job, attempt: int, token: LeaseToken) -> bool:
    return job.status is JobState.RUNNING and job.attempts == attempt and job.lease_token == token


def _apply(job: Job, change: Transition, outcome: AttemptOutcome, now: datetime) -> Job:
    """The job after ``outcome`` (``change`` is what ``decide`` made of it), with the
    result and error the outcome carries."""
    text = result_json(outcome)  # decoded again, so results look as a database returns them
    return dataclasses.replace(
        applied(job, change, now, error=outcome.error, delay_seconds=outcome.retry_delay_seconds),
        result=None if text is None else json.loads(text),
        error=outcome.error or job.error,
    )


def _reap(job: Job, now: datetime) -> Job:
    """A running job whose lease expired, as ``reap_expired_leases`` writes it."""
    change = decide(Facts.of(job, now), Chore.REAP)
    assert change is not None  # chosen as running with an expired lease
    return dataclasses.replace(
        applied(job, change, now, error=LOST_ENTRY_ERROR), error=lost_error(job)
    )


def _candidate(job: Job, seq: int) -> Candidate:
    return Candidate(
        job.id, job.use_case, job.tenant_id, job.priority.rank, job.deadline_at, job.run_at, seq
    )


def _recent(job: Job) -> RecentJob:
    return RecentJob(
        job.status.value,
        job.run_at.timestamp(),
        job.deadline_at.timestamp(),
        None if job.started_at is None else job.started_at.timestamp(),
        None if job.finished_at is None else job.finished_at.timestamp(),
    )


def _running(job: Job, worker_id: str, lease_seconds: float, now: datetime) -> Job:
    """The job started by a claim: a new attempt under a fresh lease."""
    return dataclasses.replace(
        job,
        status=JobState.RUNNING,
        attempts=job.attempts + 1,
        lease_token=LeaseToken(uuid.uuid4()),
        lease_expires_at=now + timedelta(seconds=lease_seconds),
        worker_id=worker_id,
        started_at=now,
        finished_at=None,
        progress=None,
        dispatch_id=None,
        dispatch_expires_at=None,
        updated_at=now,
    )


def _claimable(job: Job, request: ClaimRequest, now: datetime) -> bool:
    return (
        job.status is JobState.PENDING
        and job.run_at <= now
        and (job.expires_at is None or job.expires_at > now)
        and (not request.use_cases or job.use_case in request.use_cases)
        and (not request.types or job.type in request.types)
    )


def _matches(job: Job, where: JobFilter, after: PageCursor | None) -> bool:
    checks = (
        where.tenant_id is None or job.tenant_id == where.tenant_id,
        where.status is None or job.status is where.status,
        where.use_case is None or job.use_case == where.use_case,
        where.type is None or job.type == where.type,
        where.created_after is None or job.created_at > where.created_after,
        where.created_before is None or job.created_at < where.created_before,
        where.priority is None or job.priority is where.priority,
        after is None or (job.created_at, job.id) < (after.created_at, after.id),
    )
    return all(checks)
