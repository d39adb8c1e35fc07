"""The per-minute rollup of ended jobs that the dashboard's Overview reads instead of the
jobs table: per minute, use case and tenant, how many jobs succeeded, failed and were
cancelled, how many had started after their deadline, and histograms of their run time and
queue wait. The leading process writes it (``core.maintenance.Rollup``); the rows of
``ALL_TENANTS`` sum every tenant's, so that the admin's Overview reads one row per minute and
use case whatever the number of tenants.

Histograms: bucket 0 holds durations under 1 ms, bucket ``k`` (1..80) those in
[10^((k-1)/10), 10^(k/10)) ms, bucket 81 everything from 10^8 ms (28 h) on: ten buckets a
decade, so a percentile read from them is within 26% of the exact one (usually far closer:
it is interpolated within its bucket). PostgreSQL computes the same bucket in SQL
(``roll_up_finished`` in its queries.sql); the other stores call ``bucket_of``.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterable, Mapping
from datetime import datetime

ALL_TENANTS = ""  # a tenant id is never empty (validation.check_name)
HIST_LAST = 81
_FLOOR_SECONDS = 0.001
TERMINAL_STATES = ("succeeded", "failed", "cancelled")
MINUTE = 60.0

Histogram = dict[int, int]  # bucket -> jobs


def bucket_of(seconds: float) -> int:
    if seconds < _FLOOR_SECONDS:
        return 0
    return min(HIST_LAST, 1 + math.floor(10 * math.log10(seconds / _FLOOR_SECONDS)))


def bucket_bounds(bucket: int) -> tuple[float, float]:
    """[low, high) of a bucket, in seconds."""
    if bucket <= 0:
        return 0.0, _FLOOR_SECONDS
    low = _FLOOR_SECONDS * 10 ** ((bucket - 1) / 10)
    return low, _FLOOR_SECONDS * 10 ** (bucket / 10)


def merge(histograms: Iterable[Mapping[int, int]]) -> Histogram:
    total: Histogram = {}
    for histogram in histograms:
        for bucket, n in histogram.items():
            total[int(bucket)] = total.get(int(bucket), 0) + int(n)
    return total


def percentile(histogram: Mapping[int, int], q: float) -> float | None:
    """The ``q`` quantile (0..1) of the durations a histogram holds, interpolated
    geometrically within its bucket; None for an empty histogram."""
    total = sum(histogram.values())
    if total <= 0:
        return None
    rank = q * total
    seen = 0
    for bucket in sorted(histogram):
        n = histogram[bucket]
        if n <= 0:
            continue
        if seen + n >= rank:
            low, high = bucket_bounds(bucket)
            fraction = (rank - seen) / n
            if bucket == 0:
                return high * fraction
            return float(low * (high / low) ** fraction)
        seen += n
    return bucket_bounds(max(histogram))[1]


@dataclasses.dataclass(frozen=True, slots=True)
class RollupRow:
    """The jobs of one use case (and tenant, or ``ALL_TENANTS``) that ended in one minute."""

    minute: datetime
    use_case: str
    tenant_id: str
    succeeded: int = 0
    failed: int = 0
    cancelled: int = 0
    deadline_misses: int = 0
    run_hist: Histogram = dataclasses.field(default_factory=dict)
    wait_hist: Histogram = dataclasses.field(default_factory=dict)

    def count(self, status: str) -> int:
        return {"succeeded": self.succeeded, "failed": self.failed}.get(status, self.cancelled)


@dataclasses.dataclass(frozen=True, slots=True)
class RollupWindow:
    """What ``JobStore.read_rollup`` answers: the rollup rows of a window (of one tenant, or
    of ``ALL_TENANTS``), the store's clock, and per use case how long its oldest due pending
    job has waited (of that tenant)."""

    generated_at: datetime
    rows: list[RollupRow]
    oldest_due_seconds: Mapping[str, float]


@dataclasses.dataclass(frozen=True, slots=True)
class EndedJob:
    """An ended job as the rollup counts it (stores without the SQL for it)."""

    minute: datetime  # the start of the minute it ended in
    use_case: str
    tenant_id: str
    status: str
    run_seconds: float | None  # None: it never started
    wait_seconds: float | None
    missed_deadline: bool


def roll_up(ended: Iterable[EndedJob]) -> list[RollupRow]:
    """The rollup rows of ``ended``: per minute, use case and tenant, and per minute and use
    case for ``ALL_TENANTS``."""
    counts: dict[tuple[datetime, str, str], dict[str, int]] = {}
    runs: dict[tuple[datetime, str, str], Histogram] = {}
    waits: dict[tuple[datetime, str, str], Histogram] = {}
    for job in ended:
        for tenant in (job.tenant_id, ALL_TENANTS):
            key = (job.minute, job.use_case, tenant)
            of = counts.setdefault(key, dict.fromkeys((*TERMINAL_STATES, "missed"), 0))
            of[job.status] = of.get(job.status, 0) + 1
            of["missed"] += job.missed_deadline
            if job.run_seconds is not None:
                b = bucket_of(max(job.run_seconds, 0.0))
                runs.setdefault(key, {})[b] = runs.setdefault(key, {}).get(b, 0) + 1
            if job.wait_seconds is not None:
                b = bucket_of(max(job.wait_seconds, 0.0))
                waits.setdefault(key, {})[b] = waits.setdefault(key, {}).get(b, 0) + 1
    return [
        RollupRow(
            minute,
            use_case,
            tenant,
            of["succeeded"],
            of["failed"],
            of["cancelled"],
            of["missed"],
            runs.get((minute, use_case, tenant), {}),
            waits.get((minute, use_case, tenant), {}),
        )
        for (minute, use_case, tenant), of in counts.items()
    ]


def extend_rolled(
    rolled: tuple[float, float] | None, start: float, end: float
) -> tuple[float, float]:
    """The span of time whose ended jobs the rollup holds, ``(start, end)`` in epoch seconds
    by the store's clock, after a run that rolled up ``[start, end)`` (``end``: the store's
    time of the run, or the end of the last minute it rolled up if that was earlier). The
    union when the two spans meet; otherwise the one that ends later, since a leader keeps
    extending the span it wrote last. Each store keeps one such span, written with the rows
    (``JobStore.rolled_up``), so that a process that starts leading can go on from it."""
    if rolled is None:
        return start, end
    old_start, old_end = rolled
    if start <= old_end and end >= old_start:
        return min(start, old_start), max(end, old_end)
    return (start, end) if end > old_end else rolled
