"""The dashboard's rollup: histogram buckets, percentiles read from them, and the chore's
windows (pure logic; the stores' rollups are in the conformance suite)."""

from __future__ import annotations

import random
from datetime import UTC, datetime

from async_jobs.core.maintenance import Rollup
from async_jobs.domain.rollup import (
    ALL_TENANTS,
    HIST_LAST,
    EndedJob,
    bucket_bounds,
    bucket_of,
    extend_rolled,
    percentile,
    roll_up,
)
from async_jobs.domain.scheduling import percentiles


def test_every_duration_falls_in_its_bucket() -> None:
    assert bucket_of(0.0) == 0 and bucket_of(0.0009) == 0
    assert bucket_of(1e9) == HIST_LAST
    for seconds in (0.001, 0.0123, 0.5, 1.0, 7.3, 60.0, 3599.0):
        low, high = bucket_bounds(bucket_of(seconds))
        assert low <= seconds * 1.000001 and seconds < high * 1.000001


def test_percentiles_from_the_histogram_stay_close_to_the_exact_ones() -> None:
    rng = random.Random(7)
    values = [rng.lognormvariate(0, 1.5) for _ in range(5000)]
    histogram: dict[int, int] = {}
    for v in values:
        histogram[bucket_of(v)] = histogram.get(bucket_of(v), 0) + 1
    exact = percentiles(values)
    for q, name in ((0.5, "p50"), (0.95, "p95")):
        got = percentile(histogram, q)
        want = exact[name]
        assert got is not None and want is not None
        assert abs(got - want) / want < 0.26
    assert percentile({}, 0.5) is None


def test_the_rollup_of_ended_jobs_adds_an_every_tenant_row() -> None:
    minute = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)
    rows = roll_up(
        [
            EndedJob(minute, "mail", "t1", "succeeded", 1.0, 0.1, False),
            EndedJob(minute, "mail", "t2", "failed", 2.0, 0.2, True),
            EndedJob(minute, "mail", "t2", "cancelled", None, None, False),
        ]
    )
    by_tenant = {r.tenant_id: r for r in rows}
    assert set(by_tenant) == {"t1", "t2", ALL_TENANTS}
    every = by_tenant[ALL_TENANTS]
    assert (every.succeeded, every.failed, every.cancelled) == (1, 1, 1)
    assert every.deadline_misses == 1
    assert sum(every.run_hist.values()) == 2 and sum(every.wait_hist.values()) == 2


def test_the_rolled_span_grows_where_runs_meet_and_otherwise_follows_the_latest() -> None:
    assert extend_rolled(None, 100.0, 200.0) == (100.0, 200.0)
    assert extend_rolled((100.0, 200.0), 140.0, 260.0) == (100.0, 260.0)  # the next run
    assert extend_rolled((100.0, 260.0), 40.0, 100.0) == (40.0, 260.0)  # an older chunk
    assert extend_rolled((100.0, 260.0), 120.0, 180.0) == (100.0, 260.0)  # within it
    assert extend_rolled((100.0, 260.0), 400.0, 500.0) == (400.0, 500.0)  # after a gap
    assert extend_rolled((400.0, 500.0), 100.0, 200.0) == (400.0, 500.0)  # older, apart


class _Recorder:
    """A store that records the rollup's runs and holds their span by the chore's clock
    (``now``), as a store does by its own."""

    def __init__(self, now: list[float]) -> None:
        self.calls: list[tuple[float, float]] = []
        self.now = now
        self.span: tuple[float, float] | None = None

    async def roll_up_finished(self, from_seconds: float, to_seconds: float = 0.0) -> int:
        self.calls.append((from_seconds, to_seconds))
        now = self.now[0]
        self.span = extend_rolled(self.span, now - from_seconds, now - to_seconds)
        return 0

    async def rolled_up(self) -> tuple[float, float] | None:
        if self.span is None:
            return None
        return self.now[0] - self.span[0], self.now[0] - self.span[1]

    async def delete_rollup(self, older_than_seconds: float) -> int:
        return 0


def _chore(store: _Recorder) -> Rollup:
    """A leader's chore by the recorder's clock: the hour, in chunks of 15 minutes."""
    return Rollup(store, catch_up_seconds=3600, chunk_seconds=900, clock=lambda: store.now[0])  # type: ignore[arg-type]


async def _runs(chore: Rollup, store: _Recorder, runs: int) -> None:
    """``runs`` runs of the chore, 10 s apart."""
    for _ in range(runs):
        await chore.run_once()
        store.now[0] += 10


async def test_the_chore_rolls_the_latest_chunk_first_then_one_older_chunk_a_run() -> None:
    store = _Recorder([1000.0])
    chore = _chore(store)
    await _runs(chore, store, 6)
    # The latest 15 minutes first: a job that ended just now is listed after one run.
    assert store.calls[0] == (900, 0)
    # Then each run covers the time since the last one and the minute before, and the
    # next older chunk, until the hour before the first run (1000 - 3600) is done.
    assert store.calls[1:3] == [(70, 0), (1010 + 800, 1010 - 100)]
    assert store.calls[3:5] == [(70, 0), (1020 + 1700, 1020 + 800)]
    assert store.calls[5:7] == [(70, 0), (1030 + 2600, 1030 + 1700)]
    assert store.calls[7:] == [(70, 0), (70, 0)]
    store.span = None  # another store: nothing rolled up there
    chore.forget()  # no longer leading: the next run catches up again
    await chore.run_once()
    assert store.calls[-1] == (900, 0)


async def test_a_new_leader_goes_on_from_the_span_an_earlier_one_rolled_up() -> None:
    now = [1000.0]
    store = _Recorder(now)
    await _runs(_chore(store), store, 2)
    assert store.calls == [(900, 0), (70, 0), (1010 + 800, 1010 - 100)]
    # The span: from 800 s before the clock's zero (the first older chunk) to 1,010. A
    # restart: the next leader, at 1,040, rolls up the 30 s since the span ended and the
    # minute before, then catches up from where the span begins, one chunk further back.
    now[0] += 20
    second = _chore(store)
    del store.calls[:]
    await _runs(second, store, 2)
    assert store.calls == [(30 + 60, 0), (70, 0), (1050 + 1700, 1050 + 800)]
    # A span that ended longer ago than a chunk: the latest chunk first, as with none.
    now[0] += 1000
    third = _chore(store)
    await third.run_once()
    assert store.calls[-1] == (900, 0)
    # One that already reaches back over the whole catch-up: no older chunk is rolled.
    now[0] += 10
    store.span = (now[0] - 5000, now[0] - 10)
    await _runs(_chore(store), store, 3)
    assert store.calls[-3:] == [(70, 0), (70, 0), (70, 0)]
