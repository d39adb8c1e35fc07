"""The scheduler process: any number may run; one leads at a time.

Leadership is a lease row in the store (``JobStore.try_lead``): the leader renews it every
round, and when it dies (``kill -9``, a lost machine) another scheduler takes the role as
soon as the lease runs out, within ``leader_lease_seconds`` plus a round. The leader runs the
chores: the reaper, expiry, periodic jobs, retention, the dashboard's rollup and webhooks
(their sends are leased, so they are never made twice either). Every chore is a guarded
statement or an idempotent enqueue, so even two processes that both believe they lead (a paused
leader waking after its lease ran out) never do a piece of work twice.

With the direct transport the claim itself enforces every limit, so there is nothing to
dispatch. A broker transport gives the scheduler a ``Dispatcher``: while leading, it runs in
a loop of its own, again at once while it fills slots, else when jobs are enqueued or end
(the store's wake-ups) or a round has passed.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import math
import os
import socket
import time
import uuid
from collections.abc import Awaitable, Callable

from async_jobs.core.maintenance import PeriodicRunner, Retention, Rollup, expire_jobs
from async_jobs.core.metrics import Metrics
from async_jobs.core.presence import Presence, process_info
from async_jobs.core.reaper import Reaper
from async_jobs.core.webhooks import WebhookSender
from async_jobs.domain.errors import AsyncJobsError, StoreError
from async_jobs.domain.jobs import JobId
from async_jobs.domain.scheduling import RetentionPolicy
from async_jobs.domain.workers import ProcessKind
from async_jobs.ports import Dispatcher, JobStore

log = logging.getLogger("async_jobs.scheduler")

ROLE = "scheduler"  # the lease row of the chores, whatever kind of process holds it
# Under load, dispatch rounds that send jobs start at least this far apart: the slots freed
# meanwhile go out in one batch instead of a statement each. A job enqueued into an idle
# system (the last round long past) is dispatched at once.
DISPATCH_LINGER_SECONDS = 0.005


def leader_holder(process_role: str, process_id: str | None = None) -> str:
    """The holder a process writes in the lease row: ``<process role>/<process id>`` (read
    back by ``Leader``), e.g. ``worker/web-1:4242:1f2e3d``. Schedulers, workers and
    ``serve`` all stand for the same row, so one of them leads whatever the mix."""
    return f"{process_role}/{process_id or _process_id()}"


def _process_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"


@dataclasses.dataclass(frozen=True, slots=True)
class SchedulerConfig:
    interval_seconds: float = 1.0  # one round of chores (and of leadership renewal)
    leader_lease_seconds: float = 5.0
    retention_interval_seconds: float = 60.0
    retention: RetentionPolicy = dataclasses.field(default_factory=RetentionPolicy)
    # The dashboard's per-minute rollup of ended jobs: rewritten this often, kept this long.
    rollup_interval_seconds: float = 10.0
    rollup_keep_seconds: float = 48 * 3600.0
    holder: str = dataclasses.field(default_factory=lambda: leader_holder(ROLE))
    # Whether the leader reaps. A worker that leads leaves it to its own reaper, which waits
    # until the worker's held outcomes are written (after an outage its finished jobs'
    # leases may have run out: they must be recorded, not reaped and run again).
    reap: bool = True

    def __post_init__(self) -> None:
        if self.interval_seconds <= 0 or self.leader_lease_seconds <= self.interval_seconds:
            raise ValueError("the leader lease must be longer than a scheduler round")


class Scheduler:
    """Run with ``await scheduler.run()``; ``stop()`` ends it after the current round and
    hands the role over at once."""

    def __init__(
        self,
        store: JobStore,
        config: SchedulerConfig,
        periodic: PeriodicRunner | None = None,
        webhooks: WebhookSender | None = None,
        dispatcher: Dispatcher | None = None,
        metrics: Metrics | None = None,
    ) -> None:
        self._store = store
        self.config = config
        self.metrics = metrics or Metrics.off()
        self.metrics.watch_leader(lambda: self.leading)
        self._reaper = Reaper(store, metrics=self.metrics)
        self._retention = Retention(store, config.retention)
        self._periodic = periodic
        self.dispatcher = dispatcher
        self._dispatch_wanted = asyncio.Event()
        self.webhooks = webhooks
        self._stopping = asyncio.Event()
        self._last_retention = float("-inf")
        self._rollup = Rollup(store, keep_seconds=config.rollup_keep_seconds)
        self._last_rollup = float("-inf")
        self.leading = False
        self.rounds_led = 0
        # The registry record is renewed about once a leader lease, not every round.
        self._beat_every = config.leader_lease_seconds
        self._last_beat = float("-inf")
        process_role, _, process_id = config.holder.partition("/")
        # A worker standing for the chores is listed by its worker's own record.
        self.presence = Presence(
            store,
            process_info(process_id or process_role, ProcessKind.SCHEDULER),
            ttl_seconds=3 * config.leader_lease_seconds,
            enabled=process_role != "worker",
        )

    @property
    def periodic_enqueued(self) -> int:
        """Periodic ticks this scheduler has enqueued."""
        return self._periodic.enqueued if self._periodic is not None else 0

    def stop(self) -> None:
        self._stopping.set()

    async def run(self) -> None:
        dispatching = None
        if self.dispatcher is not None:
            dispatching = asyncio.create_task(self._dispatch_loop(), name="async-jobs-dispatch")
        try:
            while not self._stopping.is_set():
                await self.run_once()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._stopping.wait(), self.config.interval_seconds)
        finally:
            if dispatching is not None:
                dispatching.cancel()
                await asyncio.gather(dispatching, return_exceptions=True)
            if self.dispatcher is not None:
                await self.dispatcher.close()
            if self.webhooks is not None:
                await self.webhooks.close()  # the sends in flight end (or run out of time)
            await self.presence.leave()
            if self.leading:
                with contextlib.suppress(StoreError):
                    await self._store.resign(ROLE, self.config.holder)
                self.leading = False
                log.info("scheduler %s resigned", self.config.holder)

    async def run_once(self) -> bool:
        """One round: take or keep the lead, and if this process leads, do the chores.
        Returns whether it led. Store errors are logged; the next round tries again."""
        try:
            leading = await self._store.try_lead(
                ROLE, self.config.holder, self.config.leader_lease_seconds
            )
        except StoreError as exc:
            self.metrics.store_error("try_lead")
            log.warning("scheduler cannot reach the store: %s", exc)
            leading = False
        if leading != self.leading:
            log.info(
                "scheduler %s %s", self.config.holder, "leads" if leading else "no longer leads"
            )
            self.leading = leading
            if not leading:
                self._rollup.forget()
        now = asyncio.get_running_loop().time()
        if now - self._last_beat >= self._beat_every:
            self._last_beat = now
            await self.presence.beat()
        if leading:
            await self._chores()
            self.rounds_led += 1
        return leading

    async def _dispatch_loop(self) -> None:
        """While leading, dispatch (a pass fills every free slot); again once jobs were
        enqueued or ended (slots freed) since the pass began, or after a round."""
        assert self.dispatcher is not None
        await self._store.watch_finished(self._slots_freed)
        loop = asyncio.get_running_loop()
        failures = 0
        sent = 0
        ended = -math.inf
        while True:
            early = ended + DISPATCH_LINGER_SECONDS - loop.time()
            if sent and early > 0:
                await asyncio.sleep(early)  # wait-ok: gathers the slots freed meanwhile
            # Cleared before the pass: a slot freed during it wakes the next one at once.
            self._dispatch_wanted.clear()
            sent = 0
            if self.leading:
                try:
                    sent = await self.dispatcher.run_once()
                    ended = loop.time()
                    failures = 0
                except AsyncJobsError as exc:
                    failures += 1
                    log.warning("scheduler dispatch failed: %s", exc)
                    await asyncio.sleep(min(self.config.interval_seconds * failures, 10.0))
                    continue
            await self._wake_for_dispatch()

    def _slots_freed(self, _job_id: JobId) -> None:
        self._dispatch_wanted.set()

    async def _wake_for_dispatch(self) -> None:
        inserted = asyncio.ensure_future(self._store.wait_for_jobs(self.config.interval_seconds))
        freed = asyncio.ensure_future(self._dispatch_wanted.wait())
        try:
            await asyncio.wait(
                {inserted, freed},
                timeout=self.config.interval_seconds,
                return_when=asyncio.FIRST_COMPLETED,
            )
        finally:
            inserted.cancel()
            freed.cancel()
            await asyncio.gather(inserted, freed, return_exceptions=True)

    async def _chores(self) -> None:
        chores: list[tuple[str, Callable[[], Awaitable[object]]]] = [
            ("expiry", lambda: expire_jobs(self._store))
        ]
        if self.config.reap:
            chores.insert(0, ("reaper", self._reaper.run_once))
        if self._periodic is not None:
            chores.append(("periodic jobs", self._periodic.run_once))
        if self.webhooks is not None:  # starts sends; they finish in the background
            chores.append(("webhooks", self.webhooks.run_once))
        now = time.monotonic()
        if now - self._last_retention >= self.config.retention_interval_seconds:
            self._last_retention = now
            chores.append(("retention", self._retention.run_once))
        if now - self._last_rollup >= self.config.rollup_interval_seconds:
            self._last_rollup = now
            chores.append(("rollup", self._rollup.run_once))
        for name, chore in chores:
            try:
                await chore()
            except AsyncJobsError as exc:  # the store, or a periodic job's bad options
                log.warning("scheduler %s failed: %s", name, exc)
