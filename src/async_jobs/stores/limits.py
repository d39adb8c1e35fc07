"""The arithmetic of limits that the stores without SQL for it (SQLite, memory) share: what
a claim may take per use case and tenant, whether an insert keeps within max_pending, and
``Stats`` out of the rows of the last hour. Each store supplies its rows and its clock;
PostgreSQL computes the same in its statements.

Times here are unix epoch seconds (floats), as the SQLite store keeps them.
"""

from __future__ import annotations

import dataclasses
import math
import sys
from collections.abc import Iterable, Mapping, Sequence
from datetime import UTC, datetime

from async_jobs.domain.errors import QuotaExceededError
from async_jobs.domain.jobs import JobState, NewJob
from async_jobs.domain.scheduling import Limits, Stats, StatsCount, bucket_tokens, percentiles

Pair = tuple[str, str]  # (use case, tenant)
MINUTE = 60.0
HOUR = 3600.0
FINISHED_STATES = (JobState.SUCCEEDED.value, JobState.FAILED.value, JobState.CANCELLED.value)
UNCAPPED = sys.maxsize  # the free slots of a use case without max_concurrent


@dataclasses.dataclass(frozen=True, slots=True)
class ClaimBudget:
    """What one claim may start: ``free`` slots per use case, ``allowance`` per (use case,
    tenant) with a quota (max_running and the rate bucket; absent: no bound), and the
    ``tokens`` each rate bucket holds now."""

    free: dict[str, int]
    allowance: dict[Pair, int]
    tokens: dict[Pair, float]

    def take(self, pair: Pair, limit: int) -> int:
        """How many of the pair's candidates the claim needs to see, at most."""
        return min(self.free.get(pair[0], 0), self.allowance.get(pair, limit), limit)

    def spent(self, claimed: Iterable[Pair]) -> list[tuple[Pair, float]]:
        """(pair, tokens left) of every rate bucket the claimed jobs drew from."""
        taken: dict[Pair, int] = {}
        for pair in claimed:
            taken[pair] = taken.get(pair, 0) + 1
        return [(pair, self.tokens[pair] - n) for pair, n in taken.items() if pair in self.tokens]


def claim_budget(
    limits: Limits,
    pairs: Iterable[Pair],
    active: Mapping[Pair, int],
    buckets: Mapping[Pair, tuple[float, float]],
) -> ClaimBudget:
    """The budget of a claim over ``pairs`` (those with pending jobs), given the jobs that
    hold a slot now (``active``: queued or running, per pair) and the stored rate buckets
    (pair -> (tokens, seconds since refilled)); a use case without a cap has ``UNCAPPED``
    free slots, whatever ``active`` says of it."""
    in_use: dict[str, int] = {}
    for (use_case, _), n in active.items():
        in_use[use_case] = in_use.get(use_case, 0) + n
    free: dict[str, int] = {}
    allowance: dict[Pair, int] = {}
    tokens: dict[Pair, float] = {}
    for pair in pairs:
        use_case, tenant = pair
        if use_case not in free:
            cap = limits.max_concurrent_for(use_case)
            free[use_case] = UNCAPPED if cap is None else cap - in_use.get(use_case, 0)
        quota = limits.quota(tenant, use_case)
        if quota is None:
            continue
        bounds: list[int] = []
        if quota.max_running is not None:
            bounds.append(quota.max_running - active.get(pair, 0))
        if quota.max_per_second is not None:
            stored, seconds = buckets.get(pair, (None, 0.0))
            tokens[pair] = bucket_tokens(quota, stored, seconds)
            bounds.append(math.floor(tokens[pair]))
        if bounds:
            allowance[pair] = min(bounds)
    return ClaimBudget(free, allowance, tokens)


def rated_pairs(limits: Limits, pairs: Iterable[Pair]) -> list[Pair]:
    """The pairs whose quota has a rate (their buckets are read and written)."""
    rated = []
    for use_case, tenant in pairs:
        quota = limits.quota(tenant, use_case)
        if quota is not None and quota.max_per_second is not None:
            rated.append((use_case, tenant))
    return rated


# -- max_pending ----------------------------------------------------------------------------


def pending_bounds(jobs: Sequence[NewJob]) -> dict[tuple[str, str], int]:
    """(tenant, use case) -> the max_pending its jobs in the batch carry (the lowest)."""
    bounds: dict[tuple[str, str], int] = {}
    for job in jobs:
        if job.max_pending is not None:
            pair = (job.tenant_id, job.use_case)
            bounds[pair] = min(bounds.get(pair, job.max_pending), job.max_pending)
    return bounds


def check_pending(
    jobs: Sequence[NewJob],
    bounds: Mapping[tuple[str, str], int],
    taken: Iterable[tuple[str, str]],
    waiting: Mapping[tuple[str, str], int],
) -> None:
    """Raise ``QuotaExceededError`` for the first bounded (tenant, use case) whose waiting
    jobs (pending or queued) plus the batch's new ones would exceed its max_pending. A job
    whose idempotency key the tenant holds already (``taken``: (tenant, key) pairs), or an
    earlier job of the batch holds, is a repeat, not a new job: never counted."""
    seen = set(taken)
    new: dict[tuple[str, str], int] = {}
    for job in jobs:
        if job.idempotency_key is not None:
            key = (job.tenant_id, job.idempotency_key)
            if key in seen:
                continue
            seen.add(key)
        pair = (job.tenant_id, job.use_case)
        new[pair] = new.get(pair, 0) + 1
    for (tenant, use_case), bound in bounds.items():
        already = waiting.get((tenant, use_case), 0)
        if already + new.get((tenant, use_case), 0) > bound:
            raise QuotaExceededError(
                f"tenant {tenant!r} has {already} jobs waiting in use case {use_case!r}; "
                f"its max_pending is {bound}",
                retry_after_seconds=1.0,
                tenant_id=tenant,
                use_case=use_case,
                max_pending=bound,
            )


# -- stats ----------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True, slots=True)
class RecentJob:
    """A job that finished or started in the last hour, as ``build_stats`` reads it."""

    status: str
    run_at: float
    deadline_at: float
    started_at: float | None
    finished_at: float | None


def build_stats(
    now: float,
    counts: Iterable[StatsCount],
    recent: Iterable[RecentJob],
    overdue_pending: int,
    oldest_due_run_at: float | None,
) -> Stats:
    """``Stats`` as of ``now``, windows ending then (as PostgreSQL's: a job that finished
    or started exactly an hour ago is out)."""
    minute: dict[str, int] = dict.fromkeys(FINISHED_STATES, 0)
    hour: dict[str, int] = dict.fromkeys(FINISHED_STATES, 0)
    run: list[float] = []
    wait: list[float] = []
    misses = 0
    for job in recent:
        if job.status in hour and job.finished_at is not None and job.finished_at > now - HOUR:
            hour[job.status] += 1
            if job.finished_at > now - MINUTE:
                minute[job.status] += 1
            if job.started_at is not None:
                run.append(job.finished_at - job.started_at)
        if job.started_at is not None and job.started_at > now - HOUR:
            wait.append(max(job.started_at - job.run_at, 0.0))
            if job.started_at > job.deadline_at:
                misses += 1
    return Stats(
        generated_at=datetime.fromtimestamp(now, UTC),
        counts=sorted(counts, key=lambda c: (c.use_case, c.tenant_id, c.status)),
        finished_last_minute=minute,
        finished_last_hour=hour,
        run_seconds=percentiles(run),
        queue_wait_seconds=percentiles(wait),
        deadline_misses_last_hour=misses,
        overdue_pending=overdue_pending,
        oldest_due_age_seconds=None if oldest_due_run_at is None else now - oldest_due_run_at,
    )
