"""What each page shows, read through ``JobApp``'s operations. Every count is capped
(``COUNT_CAP``) and every list is a page: no page walks the whole jobs table. The Jobs page
and its bulk actions read at most ``SCAN_BUDGET`` jobs a request, whatever the filter."""

from __future__ import annotations

import asyncio
import dataclasses
import json
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

from cronsim import CronSim
from markupsafe import Markup, escape

from async_jobs.api.auth import Principal
from async_jobs.app import EnqueueRequest, JobApp
from async_jobs.domain.jobs import Job, JobFilter, JobState, PageCursor, Priority, listing_key
from async_jobs.domain.rollup import RollupRow, merge, percentile
from async_jobs.domain.scheduling import ANY_USE_CASE, FinishedBucket, TenantQuota
from async_jobs.domain.transitions import retryable

COUNT_CAP = 10_000
PAGE_SIZE = 50
BULK_MAX = 1000  # jobs one bulk action changes at most
# Jobs a Jobs page, or a bulk action, reads at most (newest first): a filter that matches
# few jobs or none costs this many rows, never the table; the page goes on from where it
# stopped when asked ("Search older").
SCAN_BUDGET = 20_000
RETRYABLE = (JobState.FAILED, JobState.CANCELLED)
CANCELLABLE = (JobState.PENDING, JobState.QUEUED, JobState.RUNNING)
STATES = [state.value for state in JobState]
PRIORITIES = [priority.value for priority in Priority]
TERMINAL = ("succeeded", "failed", "cancelled")
CHART_WINDOW_SECONDS = 3600
CHART_BUCKET_SECONDS = 300
CHART_BUCKETS = CHART_WINDOW_SECONDS // CHART_BUCKET_SECONDS


def capped(n: int) -> str:
    return f"{COUNT_CAP:,}+" if n > COUNT_CAP else f"{n:,}"


def seconds_text(value: float | None) -> str:
    if value is None:
        return "-"
    if value < 1:
        return f"{value * 1000:.0f} ms"
    if value < 120:
        return f"{value:.1f} s"
    if value < 7200:
        return f"{value / 60:.0f} min"
    return f"{value / 3600:.1f} h"


def pretty_json(value: Any) -> str:
    """For display inside a <pre>; Jinja escapes it."""
    return json.dumps(value, indent=2, ensure_ascii=False, sort_keys=True, default=str)


@dataclasses.dataclass(frozen=True, slots=True)
class UseCaseRow:
    name: str
    paused: bool
    counts: Mapping[str, str]
    chart: Markup
    run_p50: str = "-"
    run_p95: str = "-"
    wait_p95: str = "-"
    oldest_due: str = "-"
    deadline_misses: int = 0


@dataclasses.dataclass(frozen=True, slots=True)
class Overview:
    generated_at: datetime
    rows: list[UseCaseRow]
    finished_hour: int
    failed_hour: int
    run_p50: str
    run_p95: str
    wait_p50: str
    wait_p95: str
    oldest_due: str
    deadline_misses: int
    chart_all: Markup


async def overview(jobs: JobApp, who: Principal) -> Overview:
    """Waiting and running jobs per use case (capped counts on the partial indexes of those
    states), and what ended in the last hour from the per-minute rollup the leading process
    keeps (``domain.rollup``; of the principal's tenant, or of every tenant): never a count
    of every job, nor a read of the jobs that ended."""
    tenant = who.tenant_id
    active, window = await asyncio.gather(
        jobs.store.active_counts(tenant, COUNT_CAP + 1),
        jobs.store.read_rollup(tenant, CHART_WINDOW_SECONDS),
    )
    buckets: list[FinishedBucket] = []
    ended: dict[str, dict[str, int]] = {}
    of_use_case: dict[str, list[RollupRow]] = {}
    for r in window.rows:
        age = (window.generated_at - r.minute).total_seconds()
        of_use_case.setdefault(r.use_case, []).append(r)
        of = ended.setdefault(r.use_case, dict.fromkeys(TERMINAL, 0))
        for status in TERMINAL:
            of[status] += r.count(status)
            if r.count(status):
                bucket = int(max(age, 0.0) // CHART_BUCKET_SECONDS)
                buckets.append(FinishedBucket(r.use_case, status, bucket, r.count(status)))
    by_name = {a.use_case: a for a in active}
    rows = []
    for name in sorted(set(by_name) | set(ended) | set(window.oldest_due_seconds)):
        now = by_name.get(name)
        counts = {
            "pending": now.pending if now else 0,
            "queued": now.queued if now else 0,
            "running": now.running if now else 0,
            **ended.get(name, dict.fromkeys(TERMINAL, 0)),
        }
        # A tenant sees the use cases it has jobs in (and none of another tenant's names).
        if who.is_admin or any(counts.values()):
            paused = bool(now and now.paused)
            shown = {s: capped(n) for s, n in counts.items()}
            mine = of_use_case.get(name, [])
            runs = merge(r.run_hist for r in mine)
            rows.append(
                UseCaseRow(
                    name,
                    paused,
                    shown,
                    chart(buckets, name, 180, 28),
                    run_p50=seconds_text(percentile(runs, 0.5)),
                    run_p95=seconds_text(percentile(runs, 0.95)),
                    wait_p95=seconds_text(percentile(merge(r.wait_hist for r in mine), 0.95)),
                    oldest_due=seconds_text(window.oldest_due_seconds.get(name)),
                    deadline_misses=sum(r.deadline_misses for r in mine),
                )
            )
    runs = merge(r.run_hist for r in window.rows)
    waits = merge(r.wait_hist for r in window.rows)
    oldest = max(window.oldest_due_seconds.values(), default=None)
    return Overview(
        generated_at=window.generated_at,
        rows=rows,
        finished_hour=sum(sum(of.values()) for of in ended.values()),
        failed_hour=sum(of["failed"] for of in ended.values()),
        run_p50=seconds_text(percentile(runs, 0.5)),
        run_p95=seconds_text(percentile(runs, 0.95)),
        wait_p50=seconds_text(percentile(waits, 0.5)),
        wait_p95=seconds_text(percentile(waits, 0.95)),
        oldest_due=seconds_text(oldest),
        deadline_misses=sum(r.deadline_misses for r in window.rows),
        chart_all=chart(buckets, None, width=1200, height=120, stretch=True),
    )


def chart(
    buckets: Sequence[FinishedBucket],
    use_case: str | None,
    width: int,
    height: int,
    stretch: bool = False,
) -> Markup:
    """Stacked bars, oldest bucket on the left: succeeded (green) under failed (red). Inline
    SVG made of numbers only (the title's use case name is escaped)."""
    ok = [0] * CHART_BUCKETS
    bad = [0] * CHART_BUCKETS
    for b in buckets:
        if (use_case is None or b.use_case == use_case) and 0 <= b.bucket < CHART_BUCKETS:
            slot = CHART_BUCKETS - 1 - b.bucket
            if b.status == "failed":
                bad[slot] += b.count
            elif b.status == "succeeded":
                ok[slot] += b.count
    top = max((o + f for o, f in zip(ok, bad, strict=True)), default=0) or 1
    step = width / CHART_BUCKETS
    bar = max(step - 2, 1)
    parts = [
        f'<svg class="chart" width="{"100%" if stretch else width}" height="{height}"'
        f' viewBox="0 0 {width} {height}" preserveAspectRatio="none"'
        f' role="img" aria-label="jobs finished per 5 minutes, last hour'
        f'{" for " + str(escape(use_case)) if use_case else ""}">',
        f'<line x1="0" y1="{height - 0.5}" x2="{width}" y2="{height - 0.5}" stroke="#e4e7ec"/>',
    ]
    for i, (o, f) in enumerate(zip(ok, bad, strict=True)):
        x = i * step + 1
        h_ok = (height - 2) * o / top
        h_bad = (height - 2) * f / top
        minutes = (CHART_BUCKETS - i) * CHART_BUCKET_SECONDS // 60
        parts.append(
            f"<g><title>{minutes} to {minutes - 5} min ago: {o} succeeded, {f} failed</title>"
        )
        parts.append(
            f'<rect x="{x:.1f}" y="{height - 1 - h_ok:.1f}" width="{bar:.1f}"'
            f' height="{h_ok:.1f}" fill="#1f9d55"/>'
        )
        parts.append(
            f'<rect x="{x:.1f}" y="{height - 1 - h_ok - h_bad:.1f}" width="{bar:.1f}"'
            f' height="{h_bad:.1f}" fill="#d93f3f"/></g>'
        )
    parts.append("</svg>")
    return Markup("".join(parts))  # noqa: S704 - numbers and an escaped name only


@dataclasses.dataclass(frozen=True, slots=True)
class PeriodicRow:
    name: str
    cron: str
    type: str
    use_case: str
    last_tick: datetime | None
    next_tick: datetime
    paused: bool
    use_case_paused: bool


async def periodic(jobs: JobApp) -> list[PeriodicRow]:
    declared = jobs.declared_periodic()
    if not declared:
        return []
    # Paused flags from the use-case table (a count capped at 1 each), not a scan of jobs.
    paused = {a.use_case for a in await jobs.store.active_counts(None, 1) if a.paused}
    paused_jobs = await jobs.store.paused_periodic()
    rows = []
    now = datetime.now(UTC)
    for p in declared:
        last = await jobs.store.last_periodic_tick(p.name)
        use_case = jobs.build(EnqueueRequest(p.type, p.payload, **p.options)).use_case
        rows.append(
            PeriodicRow(
                p.name,
                p.cron,
                p.type,
                use_case,
                last,
                next(CronSim(p.cron, now)),
                p.name in paused_jobs,
                use_case in paused,
            )
        )
    return rows


@dataclasses.dataclass(frozen=True, slots=True)
class TenantRow:
    tenant: str
    use_case: str
    pending: str
    running: str
    max_pending: int | None
    max_running: int | None
    max_per_second: float | None


async def tenants(jobs: JobApp, who: Principal) -> list[TenantRow]:
    """A row per tenant and use case with a quota (of the principal's tenant only, for a
    tenant token), their rows counted at once (as many at a time as the store allows)."""
    quotas = [
        (tenant, use_case, quota)
        for tenant, of_tenant in sorted(jobs.limits.quotas.items())
        if who.tenant_id is None or tenant == who.tenant_id
        for use_case, quota in sorted(of_tenant.items())
    ]
    return list(await asyncio.gather(*(_tenant_row(jobs, *q) for q in quotas)))


async def _tenant_row(jobs: JobApp, tenant: str, use_case: str, quota: TenantQuota) -> TenantRow:
    any_use_case = use_case == ANY_USE_CASE
    where = JobFilter(tenant_id=tenant, use_case=None if any_use_case else use_case)
    pending, queued, running = await asyncio.gather(
        *(
            jobs.count_jobs(dataclasses.replace(where, status=s), COUNT_CAP + 1)
            for s in (JobState.PENDING, JobState.QUEUED, JobState.RUNNING)
        )
    )
    return TenantRow(
        tenant,
        use_case,
        capped(pending + queued),
        capped(running),
        quota.max_pending,
        quota.max_running,
        quota.max_per_second,
    )


@dataclasses.dataclass(frozen=True, slots=True)
class JobList:
    """A Jobs page: its jobs, how many match (``BULK_MAX + 1`` and more shown as
    "1,000+"), and where it goes on: ``older``, after its last job when more match;
    ``searched_to``, the last job read when the search spent ``SCAN_BUDGET`` first (jobs
    older than it were not looked at: "Search older" goes on from it)."""

    items: list[Job]
    matching: str = "0"
    older: PageCursor | None = None
    searched_to: PageCursor | None = None


async def job_list(
    jobs: JobApp, where: JobFilter, after: PageCursor | None, counted: bool = True
) -> JobList:
    """A page of the jobs matching ``where`` after ``after``; ``counted``: count them too,
    as far as a bulk action reaches (the live rows do without)."""
    scan = await jobs.scan_jobs(
        where, PAGE_SIZE, budget=SCAN_BUDGET, after=after, count_to=BULK_MAX + 1 if counted else 0
    )
    matching = f"{BULK_MAX:,}+" if scan.matched > BULK_MAX else f"{scan.matched:,}"
    older = scan.next_cursor if scan.matched > len(scan.items) else None
    return JobList(scan.items, matching, older, scan.searched_to)


@dataclasses.dataclass(frozen=True, slots=True)
class BulkPlan:
    """What a bulk retry or cancel of every job matching a filter would change: the newest
    ``BULK_MAX`` of the matching jobs in a state that allows it, among the jobs one search
    reads from the page's position; ``more``: "cap" when more matched than that, "window"
    when the search spent its budget (back to ``searched_to``) before reaching the oldest
    job, else ""."""

    verb: str  # "retry" or "cancel"
    searched: list[JobState]  # the states it looked for
    jobs: list[Job]
    more: str = ""
    searched_to: datetime | None = None

    @property
    def states(self) -> str:
        """The states it looked for, as in "pending, queued or running"."""
        names = [s.value for s in self.searched]
        return " or ".join(filter(None, [", ".join(names[:-1]), names[-1]])) if names else ""


def found_plan(found: list[Job], verb: str) -> BulkPlan:
    """The plan of a bulk action on a page that shows a search's jobs (a job id or an
    idempotency key): those jobs, of the ones the verb applies to."""
    allowed = RETRYABLE if verb == "retry" else CANCELLABLE
    return BulkPlan(verb, list(allowed), _changing([j for j in found if j.status in allowed], verb))


def _changing(jobs: list[Job], verb: str) -> list[Job]:
    """The jobs a retry would change: not those past their expires_at (``retryable``)."""
    if verb != "retry":
        return jobs
    now = datetime.now(UTC)
    return [job for job in jobs if retryable(job, now)]


async def bulk_plan(
    jobs: JobApp, where: JobFilter, verb: str, after: PageCursor | None
) -> BulkPlan:
    allowed = RETRYABLE if verb == "retry" else CANCELLABLE
    states = [s for s in allowed if where.status in (None, s)]
    scans = await asyncio.gather(
        *(
            jobs.scan_jobs(
                dataclasses.replace(where, status=s), BULK_MAX, budget=SCAN_BUDGET, after=after
            )
            for s in states
        )
    )
    found = sorted((j for scan in scans for j in scan.items), key=listing_key, reverse=True)
    found = _changing(found, verb)
    ends = [scan.searched_to.created_at for scan in scans if scan.searched_to is not None]
    if len(found) > BULK_MAX or any(scan.matched > len(scan.items) for scan in scans):
        more = "cap"
    else:
        more = "window" if ends else ""
    return BulkPlan(verb, states, found[:BULK_MAX], more, max(ends, default=None))
