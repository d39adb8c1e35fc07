"""The worker's part of the job lifecycle, on every store: retry policies and history,
timeouts, cancellation, progress, bounded results, the reaper."""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import threading
from typing import Any

import pytest

from async_jobs import (
    AttemptLimits,
    Backoff,
    InvalidTransitionError,
    JobApp,
    JobContext,
    JobNotFoundError,
    JobState,
    RetryAfter,
    WorkerConfig,
)
from async_jobs.core.worker import Worker
from async_jobs.domain.jobs import ClaimRequest
from async_jobs.domain.scheduling import Limits
from async_jobs.domain.workers import ProcessKind
from async_jobs.transports.direct import DirectTransport
from tests.helpers import age_leases, wait_until, watch_wakeup


def config(**kw: Any) -> WorkerConfig:
    values: dict[str, Any] = {"concurrency": 4, "poll_interval_seconds": 0.05}
    values.update(kw)
    return WorkerConfig(**values)


async def run_until(app: JobApp, worker: Worker, condition: Any, timeout: float = 10.0) -> None:
    """Run ``worker`` until ``condition`` holds, then stop it and wait for it to end."""
    task = asyncio.create_task(worker.run())
    try:
        await wait_until(condition, timeout=timeout)
    finally:
        worker.stop()
        worker.stop()
        await asyncio.wait_for(task, 10)


def register_long_job(app: JobApp) -> tuple[asyncio.Event, list[tuple[bool, bool]]]:
    """A job type ``long`` that runs a minute unless stopped; says when it started and, once
    stopped, whether a stop and a cancellation had been asked."""
    started = asyncio.Event()
    stopped: list[tuple[bool, bool]] = []

    @app.job("long")
    async def long(ctx: JobContext, payload: dict[str, Any]) -> None:
        started.set()
        try:
            await asyncio.sleep(60)  # wait-ok: a long job, ended by cancellation
        except asyncio.CancelledError:
            stopped.append((ctx.stop_requested, ctx.cancel_requested))
            raise

    return started, stopped


async def status_is(app: JobApp, job_id: Any, *states: JobState) -> bool:
    return (await app.get_job(job_id)).status in states


async def test_every_attempt_joins_the_history_and_the_gaps_follow_the_backoff(
    app: JobApp,
) -> None:
    policy = Backoff.constant(0.3, jitter=0.5)  # each gap in [0.15, 0.3] s plus a poll

    @app.job("always_fails", max_attempts=3, backoff=policy)
    async def always_fails(ctx: JobContext, payload: dict[str, Any]) -> None:
        raise RuntimeError(f"boom {ctx.attempt}")

    job = await app.enqueue("always_fails")
    worker = app.worker(config())
    await run_until(app, worker, lambda: status_is(app, job.id, JobState.FAILED))
    done = await app.get_job(job.id)
    assert done.status is JobState.FAILED
    assert done.attempts == 3
    assert [h.attempt for h in done.history] == [1, 2, 3]
    assert [h.outcome for h in done.history] == ["retry", "retry", "failed"]
    assert [h.error_message for h in done.history] == ["boom 1", "boom 2", "boom 3"]
    assert all(h.error_type == "RuntimeError" and h.worker_id for h in done.history)
    low, high = policy.bounds(1)
    for before, after in zip(done.history, done.history[1:], strict=False):
        assert after.started_at is not None
        gap = (after.started_at - before.finished_at).total_seconds()
        # The store's clock is ms-rounded on SQLite; the upper bound allows polling.
        assert low - 0.01 <= gap <= high + 1.0, gap
    assert done.error is not None and done.error.message == "boom 3"


async def test_a_job_can_carry_its_own_backoff(app: JobApp) -> None:
    @app.job("fails_once", max_attempts=2, backoff=Backoff.constant(3600))
    async def fails_once(ctx: JobContext, payload: dict[str, Any]) -> str:
        if ctx.attempt == 1:
            raise RuntimeError("first time")
        return "second time"

    job = await app.enqueue("fails_once", backoff=Backoff.constant(0, jitter=0))
    assert job.backoff == Backoff.constant(0, jitter=0)
    await app.run_worker(config(burst=True))
    done = await app.get_job(job.id)
    assert (done.status, done.result, done.attempts) == (JobState.SUCCEEDED, "second time", 2)


async def test_listed_exceptions_are_not_retried(app: JobApp) -> None:
    @app.job("picky", max_attempts=5, non_retryable=(KeyError,))
    async def picky(ctx: JobContext, payload: dict[str, Any]) -> None:
        raise KeyError("missing")

    job = await app.enqueue("picky")
    await app.run_worker(config(burst=True))
    done = await app.get_job(job.id)
    assert (done.status, done.attempts) == (JobState.FAILED, 1)
    assert done.error is not None and done.error.type == "KeyError"


async def test_a_handler_can_ask_for_a_retry_after_a_delay(app: JobApp) -> None:
    @app.job("later", max_attempts=3, backoff=Backoff.constant(0, jitter=0))
    async def later(ctx: JobContext, payload: dict[str, Any]) -> None:
        raise RetryAfter(3600, "rate limited")

    job = await app.enqueue("later")
    await app.run_worker(config(burst=True))
    waiting = await app.get_job(job.id)
    assert (waiting.status, waiting.attempts) == (JobState.PENDING, 1)
    assert 3590 <= (waiting.run_at - waiting.history[0].finished_at).total_seconds() <= 3601
    assert waiting.error is not None and waiting.error.message == "rate limited"


async def test_an_oversized_result_fails_the_attempt_clearly(app: JobApp) -> None:
    @app.job("big", max_attempts=3)
    async def big(ctx: JobContext, payload: dict[str, Any]) -> str:
        return "x" * 2000

    job = await app.enqueue("big")
    limits = AttemptLimits(max_result_bytes=1000)
    await app.run_worker(config(burst=True, limits=limits))
    done = await app.get_job(job.id)
    assert (done.status, done.attempts, done.result) == (JobState.FAILED, 1, None)
    assert done.error is not None and done.error.type == "ResultTooLarge"
    assert "1000" in done.error.message


async def test_a_sync_handler_past_its_timeout_is_abandoned_and_keeps_its_slot(
    app: JobApp,
) -> None:
    release = threading.Event()
    seen: list[str] = []

    @app.job("stuck", timeout_seconds=0.2, max_attempts=1)
    def stuck(ctx: JobContext, payload: dict[str, Any]) -> None:
        release.wait(30)  # ignores ctx.stop_requested on purpose

    @app.job("quick")
    def quick(ctx: JobContext, payload: dict[str, Any]) -> str:
        seen.append("quick")
        return "ok"

    blocked = await app.enqueue("stuck")
    worker = app.worker(config(concurrency=1, prefetch=0))
    task = asyncio.create_task(worker.run())
    try:
        await wait_until(lambda: status_is(app, blocked.id, JobState.FAILED))
        failed = await app.get_job(blocked.id)
        assert failed.error is not None and failed.error.type == "Timeout"
        assert worker.abandoned_threads == 1
        follower = await app.enqueue("quick")
        # The only slot is still taken by the abandoned thread: nothing may start.
        for _ in range(5):
            assert (await app.get_job(follower.id)).status is JobState.PENDING
            await asyncio.sleep(0.05)  # wait-ok: proving nothing starts while blocked
        release.set()
        await wait_until(lambda: status_is(app, follower.id, JobState.SUCCEEDED))
        assert worker.abandoned_threads == 0
    finally:
        release.set()
        worker.stop()
        await asyncio.wait_for(task, 10)
    assert seen == ["quick"]


async def test_cancelling_a_pending_job_ends_it_at_once(app: JobApp) -> None:
    job = await app.enqueue("anything", delay=3600)
    cancelled = await app.cancel(job.id)
    assert cancelled.status is JobState.CANCELLED
    assert cancelled.reason == "cancelled"
    assert cancelled.finished_at is not None
    with pytest.raises(InvalidTransitionError, match="already ended"):
        await app.cancel(job.id)  # it has ended: nothing to cancel


async def test_cancelling_a_running_async_job_stops_its_handler(app: JobApp) -> None:
    started, stopped = register_long_job(app)

    job = await app.enqueue("long")
    worker = app.worker(config(lease_seconds=3))

    async def cancel_once_running() -> bool:
        await asyncio.wait_for(started.wait(), 10)
        flagged = await app.cancel(job.id)
        assert flagged.status is JobState.RUNNING and flagged.cancel_requested
        return True

    async def cancelled() -> bool:
        return await status_is(app, job.id, JobState.CANCELLED)

    task = asyncio.create_task(worker.run())
    try:
        await cancel_once_running()
        await wait_until(cancelled, timeout=10)
    finally:
        worker.stop()
        await asyncio.wait_for(task, 10)
    done = await app.get_job(job.id)
    assert stopped == [(True, True)]
    assert done.attempts == 1 and done.history[-1].outcome == "cancelled"


async def test_a_sync_handler_sees_the_cancellation_flag(app: JobApp) -> None:
    running = threading.Event()

    @app.job("polite")
    def polite(ctx: JobContext, payload: dict[str, Any]) -> str:
        running.set()
        for _ in range(3000):
            if ctx.cancel_requested:
                return "stopped early"
            threading.Event().wait(0.01)
        return "ran to the end"

    job = await app.enqueue("polite")
    worker = app.worker(config(lease_seconds=3))
    task = asyncio.create_task(worker.run())
    try:
        await wait_until(running.is_set)
        await app.cancel(job.id)
        await wait_until(lambda: status_is(app, job.id, JobState.CANCELLED), timeout=10)
        await wait_until(lambda: worker.abandoned_threads == 0)
    finally:
        worker.stop()
        await asyncio.wait_for(task, 10)


async def test_terminal_jobs_cannot_be_cancelled_and_only_ended_jobs_retried(
    app: JobApp,
) -> None:
    @app.job("ok")
    async def ok(ctx: JobContext, payload: dict[str, Any]) -> str:
        return "fine"

    done = await app.enqueue("ok")
    waiting = await app.enqueue("ok", delay=3600)
    await app.run_worker(config(burst=True))
    with pytest.raises(InvalidTransitionError):
        await app.cancel(done.id)
    with pytest.raises(InvalidTransitionError):
        await app.retry(done.id)
    with pytest.raises(InvalidTransitionError):
        await app.retry(waiting.id)
    with pytest.raises(JobNotFoundError):
        await app.cancel("00000000-0000-0000-0000-000000000000")


async def test_retry_sends_a_failed_job_back_with_one_more_attempt(app: JobApp) -> None:
    calls: list[int] = []

    @app.job("flaky", max_attempts=1)
    async def flaky(ctx: JobContext, payload: dict[str, Any]) -> str:
        calls.append(ctx.attempt)
        if len(calls) == 1:
            raise RuntimeError("not yet")
        return "now"

    job = await app.enqueue("flaky")
    await app.run_worker(config(burst=True))
    assert (await app.get_job(job.id)).status is JobState.FAILED
    again = await app.retry(job.id)
    assert (again.status, again.reason, again.max_attempts) == (
        JobState.PENDING,
        "manual_retry",
        2,
    )
    await app.run_worker(config(burst=True))
    done = await app.get_job(job.id)
    assert (done.status, done.result, calls) == (JobState.SUCCEEDED, "now", [1, 2])
    assert [h.outcome for h in done.history] == ["failed"]


async def test_progress_is_stored_while_the_job_runs(app: JobApp) -> None:
    finish = asyncio.Event()

    @app.job("steps")
    async def steps(ctx: JobContext, payload: dict[str, Any]) -> str:
        for percent in range(0, 51, 10):
            await ctx.progress(percent, f"step {percent}")
        await finish.wait()
        return "done"

    job = await app.enqueue("steps")
    worker = app.worker(config(progress_interval_seconds=0.05))

    async def shows_progress() -> bool:
        current = await app.get_job(job.id)
        return current.progress is not None and current.progress.percent == 50

    task = asyncio.create_task(worker.run())
    try:
        await wait_until(shows_progress)
        current = await app.get_job(job.id)
        assert current.progress is not None and current.progress.message == "step 50"
        finish.set()
        await wait_until(lambda: status_is(app, job.id, JobState.SUCCEEDED))
    finally:
        finish.set()
        worker.stop()
        await asyncio.wait_for(task, 10)


async def test_the_reaper_hands_back_a_job_whose_worker_vanished(app: JobApp) -> None:
    from async_jobs.domain.jobs import ClaimRequest

    @app.job("echo")
    async def echo(ctx: JobContext, payload: dict[str, Any]) -> str:
        return "second worker"

    job = await app.enqueue("echo")
    # A worker that claims and then vanishes: its lease is never renewed, and ran out long ago.
    claim = ClaimRequest(worker_id="ghost", limit=1, lease_seconds=30)
    [claimed] = await app.store.claim_jobs(claim)
    assert claimed.id == job.id
    await age_leases(app.store, [job.id])

    worker = app.worker(config(reap_interval_seconds=0.1))
    await run_until(app, worker, lambda: status_is(app, job.id, JobState.SUCCEEDED))
    done = await app.get_job(job.id)
    assert done.attempts == 2
    assert [h.outcome for h in done.history] == ["worker_lost"]
    assert done.history[0].worker_id == "ghost"


async def test_the_reaper_fails_a_job_whose_attempts_are_spent(app: JobApp) -> None:
    from async_jobs.domain.jobs import ClaimRequest

    job = await app.enqueue("crashes", max_attempts=1)
    claim = ClaimRequest(worker_id="ghost", limit=1, lease_seconds=30)
    await app.store.claim_jobs(claim)
    await age_leases(app.store, [job.id])

    assert [j.id for j in await app.reaper().run_once()] == [job.id]
    assert await status_is(app, job.id, JobState.FAILED)
    done = await app.get_job(job.id)
    assert (done.reason, done.attempts) == ("worker_lost", 1)
    assert done.error is not None and done.error.type == "WorkerLost"


def test_worker_config_refuses_nonsense() -> None:
    with pytest.raises(ValueError, match="progress"):
        WorkerConfig(progress_interval_seconds=0)
    with pytest.raises(ValueError, match="reap"):
        WorkerConfig(reap_interval_seconds=-1)
    assert WorkerConfig(lease_seconds=10).reap_every == 5
    assert dataclasses.replace(WorkerConfig(), reap_interval_seconds=0).reap_every == 0


class _Unreachable:
    """The real store, until ``down`` is set: then every write of the worker fails, as when
    its database is unreachable (claims, renewals and outcome writes)."""

    def __init__(self, store: Any) -> None:
        self._store = store
        self.down = False

    def __getattr__(self, name: str) -> Any:
        real = getattr(self._store, name)
        if name not in ("claim_jobs", "extend_leases", "record_outcomes"):
            return real

        async def maybe_fail(*args: Any) -> Any:
            if self.down:
                from async_jobs import StoreUnavailableError

                raise StoreUnavailableError(f"injected: {name} fails")
            return await real(*args)

        return maybe_fail


async def test_a_worker_that_cannot_renew_for_a_whole_lease_stops_its_handler(
    app: JobApp,
) -> None:
    started, stopped = register_long_job(app)

    job = await app.enqueue("long")
    store = _Unreachable(app.store)
    worker = Worker(
        app.registry,
        store,  # type: ignore[arg-type]
        _direct(app, store),
        config(lease_seconds=0.6, reap_interval_seconds=0),
    )
    task = asyncio.create_task(worker.run())
    try:
        await asyncio.wait_for(started.wait(), 10)
        store.down = True
        await wait_until(lambda: stopped == [(True, False)], timeout=10)
        worker.stop()  # nothing runs any more; the release waits for the store
        store.down = False
        await asyncio.wait_for(task, 15)
    finally:
        store.down = False
        worker.stop()
        worker.stop()
        await asyncio.wait_for(task, 15)
    back = await app.get_job(job.id)
    assert (back.status, back.attempts) == (JobState.PENDING, 0)  # handed back unspent


def _direct(app: JobApp, store: Any, limits: Limits | None = None) -> Any:
    claim = ClaimRequest(
        worker_id="w",
        limit=4,
        lease_seconds=0.6,
        types=app.registry.types,
        limits=limits or Limits(),
    )
    return DirectTransport(store, claim)


def count_claims(store: Any) -> list[int]:
    """Count the claim statements of ``store`` from now on (in the one-item list)."""
    claims = [0]
    claim_jobs = store.claim_jobs

    async def counted(request: ClaimRequest) -> Any:
        claims[0] += 1
        return await claim_jobs(request)

    store.claim_jobs = counted
    return claims


async def test_an_idle_worker_claims_twice_per_job_when_nothing_caps_its_starts(
    app: JobApp,
) -> None:
    """Per job: the claim its arrival wakes, which takes it, and one right after (more may
    have come). Its outcome frees nothing another job could be waiting for (no cap, no
    quota), so no claim follows that; before, two did (a nudge, then the next call's)."""

    @app.job("noop")
    async def noop(ctx: JobContext, payload: dict[str, Any]) -> None:
        return None

    claims = count_claims(app.store)
    worker = app.worker(config(poll_interval_seconds=600, reap_interval_seconds=0))
    task = asyncio.create_task(worker.run())
    try:
        for _ in range(5):
            job = await app.enqueue("noop")
            done = functools.partial(status_is, app, job.id, JobState.SUCCEEDED)
            await wait_until(done, timeout=10)
    finally:
        worker.stop()
        await asyncio.wait_for(task, 10)
    assert 10 <= claims[0] <= 2 * 5 + 2, claims[0]  # the first claim at start, found nothing


@pytest.mark.stores("postgres")  # its wake-ups are for inserted jobs only, not retries
async def test_a_retry_due_at_once_starts_without_waiting_for_the_poll(app: JobApp) -> None:
    attempts: list[int] = []

    @app.job("flaky", max_attempts=2, backoff=Backoff.constant(0, jitter=0))
    async def flaky(ctx: JobContext, payload: dict[str, Any]) -> None:
        attempts.append(ctx.job.attempts)
        if len(attempts) == 1:
            raise RuntimeError("the first attempt fails")

    wakeup = watch_wakeup(app.store)
    worker = app.worker(config(poll_interval_seconds=600, reap_interval_seconds=0))
    task = asyncio.create_task(worker.run())
    try:
        # Listening already (making the LISTEN connection wakes a claim of its own).
        await asyncio.wait_for(wakeup.awaited.wait(), 10)
        job = await app.enqueue("flaky")
        await wait_until(lambda: status_is(app, job.id, JobState.SUCCEEDED), timeout=10)
    finally:
        worker.stop()
        await asyncio.wait_for(task, 10)
    assert attempts == [1, 2]


async def test_under_a_cap_the_next_job_starts_when_a_slot_frees_not_at_the_poll(
    app: JobApp,
) -> None:
    release = asyncio.Event()

    @app.job("held")
    async def held(ctx: JobContext, payload: dict[str, Any]) -> None:
        await release.wait()

    first = await app.enqueue("held")
    second = await app.enqueue("held")
    transport = _direct(app, app.store, Limits(max_concurrent={first.use_case: 1}))
    worker = Worker(
        app.registry,
        app.store,
        transport,
        config(poll_interval_seconds=600, lease_seconds=30, reap_interval_seconds=0),
    )

    async def one_running() -> bool:
        states = {(await app.get_job(j.id)).status for j in (first, second)}
        return states == {JobState.RUNNING, JobState.PENDING}

    async def both_done() -> bool:
        return all([await status_is(app, j.id, JobState.SUCCEEDED) for j in (first, second)])

    task = asyncio.create_task(worker.run())
    try:
        await wait_until(one_running, timeout=10)
        release.set()
        await wait_until(both_done, timeout=10)  # the poll would take 450-600 s
    finally:
        worker.stop()
        worker.stop()
        await asyncio.wait_for(task, 10)


async def test_stopping_an_idle_worker_does_not_wait_out_its_poll_interval(app: JobApp) -> None:
    @app.job("noop")
    async def noop(ctx: JobContext, payload: dict[str, Any]) -> None:
        return None

    wakeup = watch_wakeup(app.store)
    worker = app.worker(config(poll_interval_seconds=600))
    task = asyncio.create_task(worker.run())
    await asyncio.wait_for(wakeup.awaited.wait(), 10)  # it claimed nothing and waits
    worker.stop()
    await asyncio.wait_for(task, 5)  # well before the 600 s poll would end


async def test_a_worker_is_listed_while_it_runs_with_the_jobs_it_holds(app: JobApp) -> None:
    started, _ = register_long_job(app)
    await app.enqueue("long")
    worker = app.worker(config(lease_seconds=0.6, concurrency=3, use_cases=("default",)))
    task = asyncio.create_task(worker.run())
    try:
        await asyncio.wait_for(started.wait(), 10)

        async def holding_one() -> Any:
            processes, _ = await app.processes()
            return [p for p in processes if p.info.id == worker.worker_id and p.jobs_held == 1]

        [me] = await wait_until(holding_one, timeout=5)
        assert (me.info.kind, me.info.concurrency, me.info.use_cases) == (
            ProcessKind.WORKER,
            3,
            ("default",),
        )
    finally:
        worker.stop()
        worker.stop()
        await asyncio.wait_for(task, 10)
    assert (await app.processes())[0] == []  # a clean stop removes the record
