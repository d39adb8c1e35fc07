"""The worker: fetch claimed jobs, run them concurrently, record outcomes in batches.

Small loops share one set of held jobs:

- the fetcher asks the transport for as many jobs as there are free slots;
- the completer (``core.completer``) writes outcomes in batches (each write fenced by
  attempt and lease token);
- the heartbeat renews the leases of every held job in one statement per beat, stops the
  handlers of jobs the store says this worker no longer holds (or of every job, once renewals
  have failed for a whole lease), and cancels those whose cancellation was asked;
- the progress writer stores the latest progress of running jobs in one statement a second;
- the reaper (``core.reaper``) hands back jobs of workers that died.

A job is held from its claim until its outcome is written, so its lease is renewed while it
runs and while its outcome waits to be written.
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import contextlib
import dataclasses
import logging
import os
import random
import socket
import time
import uuid
from collections.abc import Callable, Sequence
from typing import Any

from async_jobs.core.completer import RECONNECT_BACKOFF, Completer
from async_jobs.core.context import JobContext
from async_jobs.core.executor import (
    AttemptLimits,
    cancelled,
    error_of,
    failure_outcome,
    released,
    run_attempt,
)
from async_jobs.core.logs import fields_of_job, job_fields
from async_jobs.core.metrics import Metrics
from async_jobs.core.presence import Presence, process_info
from async_jobs.core.reaper import Reaper
from async_jobs.core.registry import Registry
from async_jobs.core.tracing import TracedSpan, Tracing
from async_jobs.domain.errors import StoreError
from async_jobs.domain.jobs import (
    AttemptOutcome,
    Job,
    JobId,
    LeaseToken,
    OutcomeKind,
    ProgressUpdate,
)
from async_jobs.domain.workers import ProcessKind
from async_jobs.ports import JobStore, Transport

log = logging.getLogger("async_jobs.worker")

# While outcome writes fall behind (a slow or lost database), claiming stops once this many
# times the worker's capacity of jobs are held: claimed jobs that wait for an outcome write
# still show as running and hold leases.
UNWRITTEN_FACTOR = 4
# Without an explicit prefetch, a worker whose jobs are short claims further ahead: while its
# jobs' run time averages under SHORT_JOB_SECONDS (a moving average of weight RUN_WEIGHT), it
# holds SHORT_JOBS_PREFETCH times its concurrency beyond the running jobs instead of once. A
# job claimed ahead then waits about that many run times (4 x 10 ms at most) and the claims,
# a round trip and a commit each, come several times fewer (no-op jobs at concurrency 10:
# 2x the drain, half the server CPU per job). Longer jobs keep the default.
SHORT_JOB_SECONDS = 0.01
SHORT_JOBS_PREFETCH = 4
RUN_WEIGHT = 0.1
# Outcomes that put the job back to pending: once written, it may be due at once.
_REQUEUED = frozenset((OutcomeKind.RETRY, OutcomeKind.RELEASED))


def default_worker_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"


@dataclasses.dataclass(frozen=True, slots=True)
class WorkerConfig:
    """How one worker process behaves. Times are in seconds."""

    concurrency: int = 10
    use_cases: tuple[str, ...] = ()
    burst: bool = False
    lease_seconds: float = 30.0
    poll_interval_seconds: float = 1.0
    grace_seconds: float = 30.0
    max_outcome_batch: int = 1000
    # Jobs claimed ahead of free slots; default: concurrency (4x while jobs are short, see
    # SHORT_JOB_SECONDS).
    prefetch: int | None = None
    outcome_linger_seconds: float = 0.002  # gather small outcome batches this long
    progress_interval_seconds: float = 1.0  # progress reports are stored this often at most
    # Run the reaper this often (jittered); None: every half lease; 0: never.
    reap_interval_seconds: float | None = None
    limits: AttemptLimits = dataclasses.field(default_factory=AttemptLimits)
    worker_id: str = dataclasses.field(default_factory=default_worker_id)

    def __post_init__(self) -> None:
        if self.concurrency < 1:
            raise ValueError("concurrency must be at least 1")
        if self.lease_seconds <= 0 or self.poll_interval_seconds <= 0:
            raise ValueError("lease and poll interval must be positive")
        if self.prefetch is not None and self.prefetch < 0:
            raise ValueError("prefetch must not be negative")
        if self.progress_interval_seconds <= 0:
            raise ValueError("progress interval must be positive")
        if self.reap_interval_seconds is not None and self.reap_interval_seconds < 0:
            raise ValueError("reap interval must not be negative")

    @property
    def capacity(self) -> int:
        """Jobs held at once: running plus claimed ahead."""
        prefetch = self.concurrency if self.prefetch is None else self.prefetch
        return self.concurrency + prefetch

    @property
    def reap_every(self) -> float:
        """Seconds between reaper runs; 0 when this worker does not reap."""
        if self.reap_interval_seconds is None:
            return self.lease_seconds / 2
        return self.reap_interval_seconds


class Worker:
    """Runs jobs from a transport until stopped (or, in burst mode, until none are left)."""

    def __init__(
        self,
        registry: Registry,
        store: JobStore,
        transport: Transport,
        config: WorkerConfig,
        on_ready: Callable[[], None] | None = None,
        metrics: Metrics | None = None,
        tracing: Tracing | None = None,
    ) -> None:
        self.registry = registry
        self.tracing = tracing or Tracing.off()
        self.metrics = metrics or Metrics.off()
        self.config = config
        self._store = store
        self._transport = transport
        self._on_ready = on_ready
        self._running: dict[JobId, tuple[asyncio.Task[None], JobContext]] = {}
        self._abandoned = 0  # threads of sync handlers that outlived their attempt
        self._held: dict[JobId, Job] = {}
        self._ready: collections.deque[Job] = collections.deque()
        self._slot_freed = asyncio.Event()
        self._stopping = asyncio.Event()
        self._stop_now = asyncio.Event()
        self._threads: concurrent.futures.ThreadPoolExecutor | None = None
        self._completer = Completer(
            transport,
            self._forget,
            config.max_outcome_batch,
            config.outcome_linger_seconds,
            self.metrics,
            on_given_up=self._give_up,
        )
        self.metrics.watch_slots(self._slots)
        self.processed = 0
        self._mean_run: float | None = None  # seconds, moving average (see SHORT_JOB_SECONDS)
        info = process_info(
            config.worker_id, ProcessKind.WORKER, config.concurrency, config.use_cases
        )
        # Renewed with every heartbeat (a third of a lease): lapses after about three missed.
        self.presence = Presence(store, info, ttl_seconds=config.lease_seconds)

    @property
    def worker_id(self) -> str:
        return self.config.worker_id

    @property
    def abandoned_threads(self) -> int:
        """Threads of sync handlers still running although their attempt has ended."""
        return self._abandoned

    def _slots(self) -> tuple[int, int]:
        busy = len(self._running) + self._abandoned
        return busy, max(self.config.concurrency - busy, 0)

    def stop(self) -> None:
        """First call: stop fetching and let running jobs finish within the grace period.
        Second call: stop at once, handing running jobs back."""
        if self._stopping.is_set():
            self._stop_now.set()
        self._stopping.set()
        self._slot_freed.set()
        self._transport.wake()  # an idle fetch need not wait out its poll interval

    async def run(self) -> None:
        self._threads = concurrent.futures.ThreadPoolExecutor(
            max_workers=self.config.concurrency, thread_name_prefix="async-jobs"
        )
        await self._transport.start()
        self._store.watch_cancellations(self._cancel)
        try:
            await self._store.warm()  # the first jobs then start as fast as the next ones
        except StoreError as exc:  # the fetch loop waits for the store as it always does
            log.warning("cannot prepare the store for the first jobs: %s", exc)
        await self.presence.beat()
        helpers = [
            asyncio.create_task(self._completer.run(), name="async-jobs-completer"),
            asyncio.create_task(self._heartbeat(), name="async-jobs-heartbeat"),
            asyncio.create_task(self._write_progress(), name="async-jobs-progress"),
        ]
        if self.config.reap_every > 0:
            # Not while this worker still holds unwritten outcomes (after an outage): its own
            # finished jobs must be recorded, not reaped and run again.
            reaper = Reaper(self._store, metrics=self.metrics)
            reaping = reaper.run(self.config.reap_every, when=lambda: self._completer.idle)
            helpers.append(asyncio.create_task(reaping, name="async-jobs-reaper"))
        try:
            if self._on_ready is not None:
                self._on_ready()
            await self._fetch_loop()
        finally:
            await self._shutdown(helpers)

    # -- fetching ---------------------------------------------------------------------------

    async def _fetch_loop(self) -> None:
        failures = 0
        while not self._stopping.is_set():
            capacity = self._capacity()
            free = capacity - len(self._running) - len(self._ready) - self._abandoned
            unwritten_full = len(self._held) >= UNWRITTEN_FACTOR * capacity
            if free <= 0 or unwritten_full or (self._ready and free < capacity // 2):
                await self._wait_for_slot()  # claim in batches, not one job per statement
                continue
            try:
                jobs = await self._transport.receive(free, self._wait_seconds(), self._ahead())
            except StoreError as exc:
                failures += 1
                self.metrics.store_error("claim")
                log.warning("cannot fetch jobs (try %d): %s", failures, exc)
                await self._pause(RECONNECT_BACKOFF.delay(failures))
                continue
            if failures:
                self._completer.nudge()  # the store is back: write held outcomes now
            failures = 0
            for job in jobs:
                self._held[job.id] = job
            self._ready.extend(jobs)
            self._fill_slots()
            if jobs:
                # The jobs just started take their first step (a short handler: all of it)
                # before the next claim is encoded and sent: an idle worker's job used to
                # wait for that send (0.1-0.3 ms of its start latency).
                await asyncio.sleep(0)
            if not jobs and self.config.burst and await self._burst_done():
                return

    def _capacity(self) -> int:
        """Jobs to hold at once: the configured capacity, or more while jobs are short."""
        if self._short_jobs():
            return self.config.concurrency * (1 + SHORT_JOBS_PREFETCH)
        return self.config.capacity

    def _ahead(self) -> int:
        """Jobs a broker transport may read beyond the free slots: while jobs are short, as
        many as the worker claims ahead, so that its next claim need not wait for a read."""
        return self.config.concurrency * SHORT_JOBS_PREFETCH if self._short_jobs() else 0

    def _short_jobs(self) -> bool:
        """No prefetch was configured and jobs run under ``SHORT_JOB_SECONDS`` on average."""
        mean = self._mean_run
        return self.config.prefetch is None and mean is not None and mean < SHORT_JOB_SECONDS

    async def _burst_done(self) -> bool:
        """Nothing was due: done once nothing runs and every outcome is written (a written
        outcome may make a retry due at once, so look again after that)."""
        if self._running or self._ready:
            await self._wait_for_slot()
            return False
        if not self._completer.idle:
            await self._completer.wait_idle()
            return False
        return True

    def _wait_seconds(self) -> float:
        if self.config.burst:
            return 0.0
        return self.config.poll_interval_seconds * random.uniform(0.75, 1.0)

    async def _wait_for_slot(self) -> None:
        await self._slot_freed.wait()
        self._slot_freed.clear()

    async def _pause(self, seconds: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stopping.wait(), seconds)

    # -- running ----------------------------------------------------------------------------

    def _fill_slots(self) -> None:
        """Start claimed jobs while slots are free; once stopping, hand them back instead."""
        if self._stopping.is_set():
            while self._ready:
                self._completer.add(released(self._ready.popleft()))
            return
        while self._ready and len(self._running) + self._abandoned < self.config.concurrency:
            job = self._ready.popleft()
            self.metrics.job_started(job)
            ctx = JobContext(job=job, worker_id=self.worker_id, logger=log)
            task = asyncio.create_task(self._execute(job, ctx))
            self._running[job.id] = (task, ctx)

    async def _execute(self, job: Job, ctx: JobContext) -> None:
        if not self.tracing.processing(job):
            await self._attempt(job, ctx, None)
            return
        with self.tracing.process(job) as span:
            await self._attempt(job, ctx, span)

    async def _attempt(self, job: Job, ctx: JobContext, span: TracedSpan | None) -> None:
        assert self._threads is not None
        handler = self.registry.get(job.type)
        # This task's own context: the handler's log lines carry the job's fields.
        fields = fields_of_job(
            str(job.id), job.attempts, job.type, job.use_case, job.tenant_id, self.worker_id
        )
        if span is not None:
            fields.update(span.ids())
        job_fields.set(fields)
        began = time.perf_counter()
        try:
            outcome = await run_attempt(handler, job, ctx, self._threads, self.config.limits)
        except asyncio.CancelledError:
            ctx.request_stop()
            outcome = cancelled(job) if ctx.cancel_requested else released(job)
        except Exception as exc:  # a bug of ours: the attempt still ends, and counts
            log.exception("worker error while running job %s", job.id)
            outcome = (
                released(job)
                if handler is None
                else failure_outcome(job, handler, error_of(exc, self.config.limits))
            )
        finally:
            ran = time.perf_counter() - began
            self.metrics.job_ran(job, ran)
            mean = self._mean_run
            self._mean_run = ran if mean is None else mean + (ran - mean) * RUN_WEIGHT
            del self._running[job.id]
            self._account_thread(ctx)
            self._slot_freed.set()
        if ctx.cancel_requested and outcome.kind in (OutcomeKind.RETRY, OutcomeKind.RELEASED):
            outcome = cancelled(job)
        if span is not None:
            span.outcome(outcome)
        self.processed += 1
        self._completer.add(outcome)
        self._fill_slots()

    def _account_thread(self, ctx: JobContext) -> None:
        """A sync handler's thread cannot be stopped: when its attempt ended without it
        (timeout, cancellation, shutdown), its slot stays taken until the thread returns."""
        thread = ctx.thread
        if thread is None or thread.done():
            return
        self._abandoned += 1
        loop = asyncio.get_running_loop()
        log.warning("the thread of job %s runs on after its attempt ended", ctx.job.id)
        thread.add_done_callback(lambda _: loop.call_soon_threadsafe(self._thread_ended))

    def _thread_ended(self) -> None:
        self._abandoned -= 1
        self._slot_freed.set()
        self._fill_slots()

    def _forget(self, outcomes: Sequence[AttemptOutcome]) -> None:
        self.metrics.outcomes_written(outcomes, self._held)
        for outcome in outcomes:
            self._held.pop(outcome.job_id, None)
        self._slot_freed.set()
        # Their use cases' slots are free in the store now; a retry may be due already.
        self._transport.nudge(requeued=any(o.kind in _REQUEUED for o in outcomes))

    def _give_up(self, outcome: AttemptOutcome) -> None:
        """The store took neither the outcome nor a failure in its place: hold the job no
        longer, so that its lease runs out and the reaper counts the attempt (a job whose
        every attempt ends so fails once its attempts are spent)."""
        self._held.pop(outcome.job_id, None)
        self._transport.forget(outcome.job_id)
        self._slot_freed.set()

    # -- leases -----------------------------------------------------------------------------

    async def _heartbeat(self) -> None:
        interval = self.config.lease_seconds / 3
        loop = asyncio.get_running_loop()
        renewed_at = loop.time()
        failures = 0
        while True:
            await asyncio.sleep(interval if not failures else min(interval, 1.0))
            if not failures:
                await self.presence.beat(len(self._held))
            claims = [
                (job.id, job.attempts, LeaseToken(job.lease_token))
                for job in self._held.values()
                if job.lease_token is not None
            ]
            if not claims:
                renewed_at = loop.time()
                continue
            try:
                states = await self._store.extend_leases(claims, self.config.lease_seconds)
            except StoreError as exc:
                failures += 1
                self.metrics.store_error("extend_leases")
                log.warning("cannot renew %d leases: %s", len(claims), exc)
                if loop.time() - renewed_at >= self.config.lease_seconds:
                    # Another worker may have them now: stop the handlers. The jobs stay
                    # held, so that renewals resume (fenced) once the store answers, and an
                    # outcome waiting to be written is not taken for a lost worker's job.
                    for job_id, _, _ in claims:
                        self._stop_unrenewed(job_id)
                continue
            failures = 0
            renewed_at = loop.time()
            still = {state.job_id for state in states}
            for job_id, _, _ in claims:
                if job_id not in still:
                    self._lose(job_id)
            for state in states:
                if state.cancel_requested:
                    self._cancel(state.job_id)

    def _stop_unrenewed(self, job_id: JobId) -> None:
        """Renewals failed for a whole lease: stop it; a claimed one goes back unstarted."""
        if not self._stop(job_id, "its lease was not renewed for a whole lease"):
            waiting = self._unready(job_id)
            if waiting is not None:
                self._completer.add(released(waiting))

    def _lose(self, job_id: JobId) -> None:
        """Another worker owns the job now: stop it, write nothing."""
        if not self._stop(job_id, "it lost its lease"):
            self._unready(job_id)
        self._held.pop(job_id, None)
        self._transport.forget(job_id)

    def _cancel(self, job_id: JobId) -> None:
        """Cancellation of a job this worker holds was asked: stop it; it ends cancelled."""
        if not self._stop(job_id, "its cancellation was asked", cancel=True):
            waiting = self._unready(job_id)
            if waiting is not None:
                self._completer.add(cancelled(waiting))

    def _stop(self, job_id: JobId, why: str, *, cancel: bool = False) -> bool:
        """Stop the handler of a running job (its outcome follows); False if not running."""
        running = self._running.get(job_id)
        if running is None:
            return False
        task, ctx = running
        if cancel and ctx.cancel_requested:
            return True  # asked already
        log.warning("stopping job %s: %s", job_id, why)
        if cancel:
            ctx.request_cancel()
        else:
            ctx.request_stop()
        task.cancel()
        return True

    def _unready(self, job_id: JobId) -> Job | None:
        """Take a claimed, not yet started job out of the queue of ready jobs."""
        waiting = next((job for job in self._ready if job.id == job_id), None)
        if waiting is not None:
            self._ready.remove(waiting)
        return waiting

    async def _write_progress(self) -> None:
        interval = self.config.progress_interval_seconds
        while True:
            await asyncio.sleep(interval)
            updates = []
            for job_id, (_, ctx) in self._running.items():
                progress = ctx.take_progress()
                if progress is not None and ctx.job.lease_token is not None:
                    updates.append(
                        ProgressUpdate(
                            job_id,
                            ctx.job.attempts,
                            LeaseToken(ctx.job.lease_token),
                            progress.percent,
                            progress.message,
                        )
                    )
            if not updates:
                continue
            try:
                await self._store.record_progress(updates)
            except StoreError as exc:  # progress is advisory: the next report replaces it
                self.metrics.store_error("record_progress")
                log.warning("cannot store the progress of %d jobs: %s", len(updates), exc)

    # -- stopping ---------------------------------------------------------------------------

    async def _shutdown(self, helpers: list[asyncio.Task[None]]) -> None:
        self._stopping.set()
        self._fill_slots()  # claimed but not started: back at once, attempt not spent
        tasks = [task for task, _ in self._running.values()]
        if tasks and not self._stop_now.is_set():
            log.info("waiting up to %gs for %d running jobs", self.config.grace_seconds, len(tasks))
            all_done: asyncio.Future[Any] = asyncio.ensure_future(
                asyncio.gather(*tasks, return_exceptions=True)
            )
            stop_now: asyncio.Future[Any] = asyncio.ensure_future(self._stop_now.wait())
            await asyncio.wait(
                [all_done, stop_now],
                timeout=self.config.grace_seconds,
                return_when=asyncio.FIRST_COMPLETED,
            )
            stop_now.cancel()
        for task, ctx in list(self._running.values()):
            ctx.request_stop()
            task.cancel()
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)
        try:
            await asyncio.wait_for(self._completer.wait_idle(), timeout=10)
        except TimeoutError:
            log.error("could not record every outcome before stopping; leases will expire")
        for helper in helpers:
            helper.cancel()
        await asyncio.gather(*helpers, return_exceptions=True)
        await self._transport.stop()
        await self.presence.leave()
        if self._threads is not None:
            self._threads.shutdown(wait=False, cancel_futures=True)
