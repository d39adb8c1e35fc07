"""What may run now: per-use-case concurrency, tenant quotas, and the values the scheduler
and ``GET /stats`` pass around. Pure values; the stores enforce them atomically.

Quotas come from ``ASYNC_JOBS_PER_TENANT_QUOTAS``, a JSON object of tenants, each an object
of use cases (``"*"``: every use case the tenant has no entry for), each with any of
``max_pending`` (jobs waiting to start, checked at enqueue), ``max_running`` (jobs queued or
running at once) and ``max_per_second`` (starts per second, bursts of up to one second's
worth)::

    {"tenant-a": {"notifications": {"max_pending": 1000, "max_running": 5},
                  "*": {"max_per_second": 20}}}
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from datetime import datetime
from typing import Any

from async_jobs.domain.errors import ConfigurationError

ANY_USE_CASE = "*"
_QUOTA_KEYS = ("max_pending", "max_running", "max_per_second")


@dataclasses.dataclass(frozen=True, slots=True)
class TenantQuota:
    """One tenant's limits in one use case; ``None``: no limit of that kind."""

    max_pending: int | None = None
    max_running: int | None = None
    max_per_second: float | None = None

    @property
    def burst(self) -> float:
        """Tokens a full bucket holds: one second's worth of starts, at least one."""
        return max(1.0, self.max_per_second or 0.0)


@dataclasses.dataclass(frozen=True, slots=True)
class Limits:
    """Every bound on what may start: per use case, and per tenant and use case. A use case
    with no ``max_concurrent`` entry (and no ``default_max_concurrent``) has no cap."""

    default_max_concurrent: int | None = None
    max_concurrent: Mapping[str, int] = dataclasses.field(default_factory=dict)
    quotas: Mapping[str, Mapping[str, TenantQuota]] = dataclasses.field(default_factory=dict)

    def max_concurrent_for(self, use_case: str) -> int | None:
        """The use case's cap on jobs queued or running at once; ``None``: no cap."""
        return self.max_concurrent.get(use_case, self.default_max_concurrent)

    def guarded(self, use_case: str) -> bool:
        """Whether a claim of the use case must count its active jobs and take turns with
        the other claimers: it has a cap, or some tenant has a quota in it (its own entry
        or ``"*"``). An unguarded use case is claimed without either."""
        if self.max_concurrent_for(use_case) is not None:
            return True
        return any(
            use_case in of_tenant or ANY_USE_CASE in of_tenant for of_tenant in self.quotas.values()
        )

    @property
    def any(self) -> bool:
        """Whether any use case has a cap or any tenant a quota: only then can a job that
        ends let another one start that could not before."""
        return (
            self.default_max_concurrent is not None
            or bool(self.max_concurrent)
            or bool(self.quotas)
        )

    def quota(self, tenant_id: str, use_case: str) -> TenantQuota | None:
        of_tenant = self.quotas.get(tenant_id)
        if of_tenant is None:
            return None
        return of_tenant.get(use_case) or of_tenant.get(ANY_USE_CASE)

    def quota_rows(
        self,
    ) -> list[tuple[str, str, int | None, float | None]]:
        """(tenant, use case, max_running, max_per_second) of every quota entry, as the
        stores take them (an entry without either still hides the tenant's ``"*"``)."""
        return [
            (tenant, use_case, quota.max_running, quota.max_per_second)
            for tenant, of_tenant in sorted(self.quotas.items())
            for use_case, quota in sorted(of_tenant.items())
        ]


def parse_quotas(raw: Mapping[str, Any], source: str) -> dict[str, dict[str, TenantQuota]]:
    """Check the JSON of ``ASYNC_JOBS_PER_TENANT_QUOTAS``; ``ConfigurationError`` naming
    ``source`` and the bad entry otherwise."""
    quotas: dict[str, dict[str, TenantQuota]] = {}
    for tenant, of_tenant in raw.items():
        if not isinstance(of_tenant, Mapping):
            raise ConfigurationError(f"{source}: {tenant!r} must map use cases to quotas")
        quotas[tenant] = {}
        for use_case, entry in of_tenant.items():
            where = f"{source}: {tenant!r} / {use_case!r}"
            if not isinstance(entry, Mapping):
                raise ConfigurationError(f"{where} must be an object of {', '.join(_QUOTA_KEYS)}")
            unknown = sorted(set(entry) - set(_QUOTA_KEYS))
            if unknown:
                raise ConfigurationError(
                    f"{where}: unknown key {unknown[0]!r}; known: {', '.join(_QUOTA_KEYS)}"
                )
            quotas[tenant][use_case] = TenantQuota(
                max_pending=_count(entry.get("max_pending"), f"{where} max_pending"),
                max_running=_count(entry.get("max_running"), f"{where} max_running"),
                max_per_second=_rate(entry.get("max_per_second"), f"{where} max_per_second"),
            )
    return quotas


def _count(value: Any, where: str) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ConfigurationError(f"{where} must be a whole number >= 0, not {value!r}")
    return value


def _rate(value: Any, where: str) -> float | None:
    if value is None:
        return None
    if (
        isinstance(value, bool)
        or not isinstance(value, int | float)
        or not math.isfinite(value)
        or value <= 0
    ):
        raise ConfigurationError(f"{where} must be a number > 0, not {value!r}")
    return float(value)


@dataclasses.dataclass(frozen=True, slots=True)
class UseCaseState:
    """A use case as the administration sees it."""

    name: str
    paused: bool
    updated_at: datetime | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "paused": self.paused,
            "updated_at": self.updated_at.isoformat() if self.updated_at else None,
        }


@dataclasses.dataclass(frozen=True, slots=True)
class Leader:
    """Who holds the lease of a role (``"scheduler"``: the chores) and since when. The
    holder reads ``<process role>/<process id>``, e.g. ``worker/web-1:4242:1f2e3d``."""

    holder: str
    since: datetime
    expires_at: datetime

    @property
    def process_role(self) -> str:
        """``scheduler``, ``worker`` or ``serve``: what kind of process leads."""
        role, _, rest = self.holder.partition("/")
        return role if rest else "scheduler"

    @property
    def process_id(self) -> str:
        role, _, rest = self.holder.partition("/")
        return rest or role

    def to_json(self) -> dict[str, Any]:
        return {
            "role": self.process_role,
            "id": self.process_id,
            "since": self.since.isoformat(),
            "expires_at": self.expires_at.isoformat(),
        }


@dataclasses.dataclass(frozen=True, slots=True)
class RetentionPolicy:
    """How long terminal jobs are kept, per state, in seconds (``None``: for ever)."""

    succeeded_seconds: float | None = 24 * 3600.0
    cancelled_seconds: float | None = 24 * 3600.0
    failed_seconds: float | None = 7 * 24 * 3600.0

    def ages(self) -> dict[str, float]:
        """state -> age in seconds beyond which its jobs are deleted."""
        ages = {
            "succeeded": self.succeeded_seconds,
            "cancelled": self.cancelled_seconds,
            "failed": self.failed_seconds,
        }
        return {state: age for state, age in ages.items() if age is not None}

    @classmethod
    def uniform(cls, seconds: float) -> RetentionPolicy:
        return cls(seconds, seconds, seconds)


Percentiles = dict[str, float | None]  # {"p50": ..., "p95": ..., "p99": ...} in seconds


@dataclasses.dataclass(frozen=True, slots=True)
class StatsCount:
    use_case: str
    tenant_id: str
    status: str
    count: int


@dataclasses.dataclass(frozen=True, slots=True)
class Stats:
    """What ``GET /stats`` and ``async-jobs stats`` show; windows end at ``generated_at``.

    - ``counts``: jobs by use case, tenant and state (every job the store holds).
    - ``finished_last_minute`` / ``finished_last_hour``: terminal state -> jobs that reached
      it in that window (throughput).
    - ``run_seconds``: start to finish, and ``queue_wait_seconds``: due (``run_at``) to
      start, as p50/p95/p99 over the jobs that finished (resp. started) in the last hour.
    - ``deadline_misses_last_hour``: jobs that started after their ``deadline_at`` in the
      last hour; ``overdue_pending``: pending jobs past their deadline now.
    - ``oldest_due_age_seconds``: how long the longest-waiting due pending job has waited.
    """

    generated_at: datetime
    counts: list[StatsCount]
    finished_last_minute: dict[str, int]
    finished_last_hour: dict[str, int]
    run_seconds: Percentiles
    queue_wait_seconds: Percentiles
    deadline_misses_last_hour: int
    overdue_pending: int
    oldest_due_age_seconds: float | None

    def to_json(self) -> dict[str, Any]:
        return {
            "generated_at": self.generated_at.isoformat(),
            "counts": [dataclasses.asdict(count) for count in self.counts],
            "throughput": {
                "last_minute": self.finished_last_minute,
                "last_hour": self.finished_last_hour,
            },
            "run_seconds": self.run_seconds,
            "queue_wait_seconds": self.queue_wait_seconds,
            "deadline_misses": {
                "last_hour": self.deadline_misses_last_hour,
                "overdue_pending": self.overdue_pending,
            },
            "oldest_due_age_seconds": self.oldest_due_age_seconds,
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Stats:
        """The inverse of ``to_json`` (``GET /stats`` as a client reads it)."""
        throughput = data.get("throughput") or {}
        misses = data.get("deadline_misses") or {}
        oldest = data.get("oldest_due_age_seconds")
        return cls(
            generated_at=datetime.fromisoformat(data["generated_at"]),
            counts=[
                StatsCount(
                    use_case=str(count["use_case"]),
                    tenant_id=str(count["tenant_id"]),
                    status=str(count["status"]),
                    count=int(count["count"]),
                )
                for count in data.get("counts") or ()
            ],
            finished_last_minute=_counts(throughput.get("last_minute")),
            finished_last_hour=_counts(throughput.get("last_hour")),
            run_seconds=_percentiles(data.get("run_seconds")),
            queue_wait_seconds=_percentiles(data.get("queue_wait_seconds")),
            deadline_misses_last_hour=int(misses.get("last_hour", 0)),
            overdue_pending=int(misses.get("overdue_pending", 0)),
            oldest_due_age_seconds=None if oldest is None else float(oldest),
        )


def _counts(data: Mapping[str, Any] | None) -> dict[str, int]:
    return {str(state): int(n) for state, n in (data or {}).items()}


def _percentiles(data: Mapping[str, Any] | None) -> Percentiles:
    return {str(q): None if v is None else float(v) for q, v in (data or {}).items()}


def percentiles(values: list[float]) -> Percentiles:
    """p50/p95/p99 of ``values`` (linear interpolation, as PostgreSQL's percentile_cont)."""
    if not values:
        return {"p50": None, "p95": None, "p99": None}
    ordered = sorted(values)
    return {f"p{int(q * 100)}": _interpolate(ordered, q) for q in (0.5, 0.95, 0.99)}


def _interpolate(ordered: list[float], q: float) -> float:
    position = q * (len(ordered) - 1)
    low = math.floor(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


@dataclasses.dataclass(frozen=True, slots=True)
class Candidate:
    """A due pending job as the claim weighs it; ``rank``: its priority's place (0 first);
    ``seq``: its place in insertion order, the last tie-break (two tenants' jobs enqueued
    within the store clock's resolution go in the order they were enqueued)."""

    job_id: Any
    use_case: str
    tenant_id: str
    rank: int
    deadline_at: datetime
    run_at: datetime
    seq: int = 0


def plan_claim(
    groups: Mapping[tuple[str, str], list[Candidate]],
    free: Mapping[str, int],
    allowance: Mapping[tuple[str, str], int],
    limit: int,
) -> list[Candidate]:
    """Choose what a claim takes; the stores without SQL for it (SQLite, memory) call this,
    and PostgreSQL's ``async_jobs_claim`` computes the same in one statement.

    ``groups``: (use case, tenant) -> its due candidates in priority, deadline, run_at order;
    ``free``: use case -> slots left under max_concurrent; ``allowance``: (use case,
    tenant) -> starts its max_running and rate bucket allow now (absent: no bound). Each
    tenant offers its first jobs in turn (turn 1 is its first job), so within a priority the
    tenants take turns; the use case keeps the first ``free`` of those, the claim the first
    ``limit`` overall."""
    offered: dict[str, list[tuple[tuple[int, int, datetime, datetime, int], Candidate]]] = {}
    for (use_case, tenant), candidates in groups.items():
        slots = min(free.get(use_case, 0), allowance.get((use_case, tenant), limit), limit)
        for turn, candidate in enumerate(candidates[: max(slots, 0)], start=1):
            key = (candidate.rank, turn, candidate.deadline_at, candidate.run_at, candidate.seq)
            offered.setdefault(use_case, []).append((key, candidate))
    kept: list[tuple[tuple[int, int, datetime, datetime, int], Candidate]] = []
    for use_case, entries in offered.items():
        entries.sort(key=lambda entry: entry[0])
        kept.extend(entries[: free.get(use_case, 0)])
    kept.sort(key=lambda entry: entry[0])
    return [candidate for _, candidate in kept[:limit]]


def bucket_tokens(quota: TenantQuota, tokens: float | None, refilled_seconds_ago: float) -> float:
    """Tokens in a rate bucket now: a new bucket is full; it refills at max_per_second."""
    if quota.max_per_second is None:
        return math.inf
    if tokens is None:
        return quota.burst
    return min(quota.burst, tokens + quota.max_per_second * max(refilled_seconds_ago, 0.0))


@dataclasses.dataclass(frozen=True, slots=True)
class FinishedBucket:
    """Jobs of a use case that reached a terminal ``status`` in one time bucket (``bucket``
    0 is the latest): a bar of the dashboard's charts, summed from the rollup's minutes."""

    use_case: str
    status: str
    bucket: int
    count: int


@dataclasses.dataclass(frozen=True, slots=True)
class ActiveCounts:
    """A use case's waiting and running jobs (each count capped, see
    ``JobStore.active_counts``) and whether it is paused."""

    use_case: str
    paused: bool
    pending: int
    queued: int
    running: int


# The states the store gauges count: the work to do, not the history (terminal jobs are
# counted by the counters as they end).
GAUGE_STATES = ("pending", "queued", "running")


@dataclasses.dataclass(frozen=True, slots=True)
class JobGauges:
    """What ``async_jobs_jobs`` and ``async_jobs_oldest_due_job_age_seconds`` report: jobs
    per (state, use case), each count capped (see ``JobStore.job_gauges``), and per use case
    the age in seconds of the oldest due pending job among those counted."""

    counts: Mapping[tuple[str, str], int]
    oldest_due_seconds: Mapping[str, float]
