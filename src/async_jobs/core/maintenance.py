"""The scheduler leader's chores besides reaping: retention, expiry and periodic jobs.

Each chore is safe to run twice or from two processes at once: retention and expiry are
guarded statements in bounded batches, and a periodic job's tick is enqueued under an
idempotency key that names the schedule and the tick, so the database lets it in once.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from datetime import UTC, datetime, timedelta
from typing import Any

from cronsim import CronSim, CronSimError

from async_jobs.domain.errors import ConfigurationError
from async_jobs.domain.jobs import Job
from async_jobs.domain.rollup import MINUTE
from async_jobs.domain.scheduling import RetentionPolicy
from async_jobs.ports import JobStore

log = logging.getLogger("async_jobs.maintenance")

DEFAULT_BATCH = 1000


class Retention:
    """Deletes terminal jobs older than the policy's age for their state, in batches of
    ``batch_size`` (each batch its own short statement, so the table is never locked for
    long); pending, queued and running jobs are never touched."""

    def __init__(
        self, store: JobStore, policy: RetentionPolicy, batch_size: int = DEFAULT_BATCH
    ) -> None:
        if batch_size < 1:
            raise ValueError("batch size must be at least 1")
        self._store = store
        self.policy = policy
        self._batch_size = batch_size

    async def run_once(self) -> dict[str, int]:
        """Delete what the policy says now; returns state -> jobs deleted."""
        deleted: dict[str, int] = {}
        for status, age in self.policy.ages().items():
            deleted[status] = 0
            while True:
                count = await self._store.delete_finished(status, age, self._batch_size)
                deleted[status] += count
                if count < self._batch_size:
                    break
        if any(deleted.values()):
            log.info("retention deleted %s", deleted)
        return deleted


class Rollup:
    """Keeps the dashboard's per-minute rollup of ended jobs (``domain.rollup``) current:
    each run recomputes the minutes since the last run began (and the minute before it,
    which was still filling then) from the store's index of ended jobs, and deletes the rows
    older than ``keep_seconds``. A process that starts leading goes on from the span an
    earlier leader rolled up (``JobStore.rolled_up``) when that span ends within the latest
    ``chunk_seconds``, as after a restart or a deploy: it rolls up the time since (and the
    minute before), then catches up from where the span begins. Otherwise it rolls up the
    latest ``chunk_seconds`` first (what the Overview shows first). Either way it then
    catches up on the rest of the last ``catch_up_seconds``, one older chunk a run, so that
    no run holds up the other chores for long. Safe from two processes at once: a run
    replaces rows with what the jobs say."""

    def __init__(
        self,
        store: JobStore,
        keep_seconds: float = 48 * 3600.0,
        catch_up_seconds: float = 3600.0,
        chunk_seconds: float = 900.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._store = store
        self.keep_seconds = keep_seconds
        self._catch_up = catch_up_seconds
        self._chunk = chunk_seconds
        self._clock = clock
        # By ``clock``: the latest minutes are rolled up to about ``_done_until``, the
        # catch-up has gone back to ``_caught_up_to`` and stops at ``_catch_up_from``.
        self._done_until: float | None = None
        self._caught_up_to = 0.0
        self._catch_up_from = 0.0

    def forget(self) -> None:
        """This process stopped leading: the next run starts with a catch-up."""
        self._done_until = None

    async def run_once(self) -> int:
        """Roll up what ended since the last run, and one older chunk while catching up;
        returns the rows written."""
        now = self._clock()
        if self._done_until is None:
            back, done_back = await self._start()
            self._caught_up_to = now - done_back
            self._catch_up_from = now - self._catch_up
            written = await self._store.roll_up_finished(back, 0.0)
        else:
            back = min(now - self._done_until + MINUTE, self._catch_up)
            written = await self._store.roll_up_finished(back, 0.0)
            written += await self._older_chunk(now)
        self._done_until = now
        await self._store.delete_rollup(self.keep_seconds)
        return written

    async def _start(self) -> tuple[float, float]:
        """A new leader's first run: how far back it rolls up, and how far back the rollup
        is then done (where the catch-up goes on from), in seconds before now."""
        latest = min(self._chunk, self._catch_up)
        rolled = await self._store.rolled_up()
        if rolled is None or rolled[1] + MINUTE > latest:
            return latest, latest
        begins_ago, ends_ago = rolled
        back = max(ends_ago, 0.0) + MINUTE  # and the minute that was still filling then
        return back, min(max(begins_ago, back), self._catch_up)

    async def _older_chunk(self, now: float) -> int:
        if self._caught_up_to <= self._catch_up_from:
            return 0
        start = max(self._caught_up_to - self._chunk, self._catch_up_from)
        written = await self._store.roll_up_finished(now - start, now - self._caught_up_to)
        self._caught_up_to = start
        return written


async def expire_jobs(store: JobStore, batch_size: int = DEFAULT_BATCH) -> list[Job]:
    """End every pending or queued job whose ``expires_at`` passed (cancelled, reason
    ``expired``); returns them."""
    expired: list[Job] = []
    while True:
        batch = await store.expire_jobs(batch_size)
        expired.extend(batch)
        if len(batch) < batch_size:
            break
    for job in expired:
        log.info("job %s (%s) expired before it could start", job.id, job.type)
    return expired


@dataclasses.dataclass(frozen=True, slots=True)
class PeriodicJob:
    """A job enqueued on a cron schedule (five fields, UTC): ``name`` identifies the schedule
    (its ticks, its idempotency keys); ``options`` are ``enqueue``'s keyword arguments."""

    name: str
    cron: str
    type: str
    payload: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    options: Mapping[str, Any] = dataclasses.field(default_factory=dict)

    def __post_init__(self) -> None:
        try:
            CronSim(self.cron, datetime.now(UTC))
        except CronSimError as exc:
            raise ConfigurationError(
                f"periodic job {self.name!r}: bad cron expression {self.cron!r}: {exc}"
            ) from exc

    def latest_tick(self, now: datetime) -> datetime:
        """The last tick at or before ``now``."""
        start = now.astimezone(UTC).replace(second=0, microsecond=0) + timedelta(minutes=1)
        tick: datetime = next(iter(CronSim(self.cron, start, reverse=True)))
        return tick

    def idempotency_key(self, tick: datetime) -> str:
        return f"periodic:{self.name}:{tick.astimezone(UTC).isoformat()}"


EnqueueTick = Callable[[PeriodicJob, datetime], Awaitable[None]]


class PeriodicRunner:
    """Enqueues each periodic job's ticks as they come.

    Policy for missed ticks (the scheduler was down, or no process led): when ticks were
    missed, only the latest one is enqueued, once, as soon as a leader runs again; the
    others are skipped (a job that runs every minute does not run 300 times after a
    five-hour outage). A schedule seen for the first time starts with its next tick, unless
    its latest tick is less than ``first_tick_grace`` old."""

    def __init__(
        self,
        store: JobStore,
        jobs: list[PeriodicJob],
        enqueue: EnqueueTick,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
        first_tick_grace: timedelta = timedelta(seconds=60),
    ) -> None:
        self._store = store
        self.jobs = jobs
        self._enqueue = enqueue
        self._clock = clock
        self._grace = first_tick_grace
        self._done: dict[str, datetime] = {}  # the last tick known to be enqueued
        self.enqueued = 0

    async def run_once(self) -> list[tuple[str, datetime]]:
        """Enqueue every tick that is due now and not yet enqueued; returns them."""
        now = self._clock()
        enqueued: list[tuple[str, datetime]] = []
        for job in self.jobs:
            tick = job.latest_tick(now)
            if tick <= self._done.get(job.name, datetime.min.replace(tzinfo=UTC)):
                continue
            last = await self._store.last_periodic_tick(job.name)
            if last is not None and last >= tick:
                self._done[job.name] = last
                continue
            # Read only when a tick is due: a paused job's ticks pass unenqueued.
            due = last is not None or now - tick <= self._grace
            if due and job.name not in await self._store.paused_periodic():
                await self._enqueue(job, tick)  # idempotent: keyed by schedule and tick
                enqueued.append((job.name, tick))
            await self._store.advance_periodic(job.name, tick)
            self._done[job.name] = tick
        self.enqueued += len(enqueued)
        return enqueued
