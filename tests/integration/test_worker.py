"""The worker against every store: results, errors, retries, timeouts, stop."""

from __future__ import annotations

import asyncio
from typing import Any

from async_jobs import (
    Backoff,
    JobApp,
    JobContext,
    JobState,
    NonRetryableError,
    WorkerConfig,
)
from tests.helpers import register_handler_styles, register_held_job, wait_until

NO_WAIT = Backoff.constant(0, jitter=0)


def burst(concurrency: int = 4, **kw: Any) -> WorkerConfig:
    return WorkerConfig(concurrency=concurrency, burst=True, poll_interval_seconds=0.05, **kw)


async def test_runs_async_sync_and_class_handlers(app: JobApp) -> None:
    GreetJob, threads = register_handler_styles(app)

    a = await app.enqueue("add", {"a": 2, "b": 3})
    b = await app.enqueue("blocking")
    c = await app.enqueue(GreetJob, {"name": "ada"})
    worker = await app.run_worker(burst())
    assert worker.processed == 3
    results = {j.type: (await app.get_job(j.id)) for j in (a, b, c)}
    assert {t: (j.status, j.result) for t, j in results.items()} == {
        "add": (JobState.SUCCEEDED, 5),
        "blocking": (JobState.SUCCEEDED, "done"),
        "greet": (JobState.SUCCEEDED, {"hello": "ada", "attempt": 1}),
    }
    assert threads and threads[0].startswith("async-jobs")
    assert all(j.finished_at is not None and j.lease_token is None for j in results.values())


async def test_a_failing_handler_is_retried_then_failed(app: JobApp) -> None:
    calls: list[int] = []

    @app.job("flaky", max_attempts=3, backoff=NO_WAIT)
    async def flaky(ctx: JobContext, payload: dict[str, Any]) -> None:
        calls.append(ctx.attempt)
        raise ValueError(f"bad attempt {ctx.attempt}")

    job = await app.enqueue("flaky")
    await app.run_worker(burst())
    failed = await app.get_job(job.id)
    assert calls == [1, 2, 3]
    assert failed.status is JobState.FAILED
    assert failed.attempts == 3
    assert failed.error is not None
    assert (failed.error.type, failed.error.message) == ("ValueError", "bad attempt 3")
    assert failed.error.traceback and "bad attempt 3" in failed.error.traceback


async def test_a_job_that_recovers_succeeds_on_a_later_attempt(app: JobApp) -> None:
    @app.job("recovers", backoff=NO_WAIT)
    async def recovers(ctx: JobContext, payload: dict[str, Any]) -> int:
        if ctx.attempt < 2:
            raise RuntimeError("not yet")
        return ctx.attempt

    job = await app.enqueue("recovers", max_attempts=5)
    await app.run_worker(burst())
    done = await app.get_job(job.id)
    assert (done.status, done.attempts, done.result) == (JobState.SUCCEEDED, 2, 2)


async def test_non_retryable_errors_fail_at_once(app: JobApp) -> None:
    @app.job("refuses", max_attempts=5, backoff=NO_WAIT)
    async def refuses(ctx: JobContext, payload: dict[str, Any]) -> None:
        raise NonRetryableError("never going to work")

    job = await app.enqueue("refuses")
    await app.run_worker(burst())
    done = await app.get_job(job.id)
    assert (done.status, done.attempts) == (JobState.FAILED, 1)


async def test_a_slow_async_handler_times_out(app: JobApp) -> None:
    @app.job("slow", timeout_seconds=0.1, max_attempts=1)
    async def slow(ctx: JobContext, payload: dict[str, Any]) -> None:
        await asyncio.Event().wait()

    job = await app.enqueue("slow")
    await app.run_worker(burst())
    done = await app.get_job(job.id)
    assert done.status is JobState.FAILED
    assert done.error is not None and done.error.type == "Timeout"


async def test_a_result_that_is_not_json_fails_the_job(app: JobApp) -> None:
    @app.job("weird")
    async def weird(ctx: JobContext, payload: dict[str, Any]) -> object:
        return {"when": object()}

    job = await app.enqueue("weird")
    await app.run_worker(burst())
    done = await app.get_job(job.id)
    assert done.status is JobState.FAILED
    assert done.error is not None and done.error.type == "ResultNotJson"


async def test_concurrency_is_bounded(app: JobApp) -> None:
    active = 0
    peak = 0

    @app.job("busy")
    async def busy(ctx: JobContext, payload: dict[str, Any]) -> None:
        nonlocal active, peak
        active += 1
        peak = max(peak, active)
        await asyncio.sleep(0.01)  # wait-ok: the job's own work
        active -= 1

    await app.enqueue_many([app_request("busy") for _ in range(30)])
    worker = await app.run_worker(burst(concurrency=3))
    assert worker.processed == 30
    assert peak == 3


async def test_graceful_stop_lets_a_running_job_finish(app: JobApp) -> None:
    started, release = register_held_job(app)

    job = await app.enqueue("long")
    worker = app.worker(WorkerConfig(concurrency=2, poll_interval_seconds=0.05, grace_seconds=10))
    running = asyncio.create_task(worker.run())
    await asyncio.wait_for(started.wait(), 10)
    worker.stop()
    release.set()
    await asyncio.wait_for(running, 10)
    done = await app.get_job(job.id)
    assert (done.status, done.result) == (JobState.SUCCEEDED, "finished")


async def test_stop_after_the_grace_period_hands_the_job_back_unspent(app: JobApp) -> None:
    started = asyncio.Event()

    @app.job("stuck")
    async def stuck(ctx: JobContext, payload: dict[str, Any]) -> None:
        started.set()
        await asyncio.Event().wait()

    job = await app.enqueue("stuck")
    worker = app.worker(WorkerConfig(concurrency=1, poll_interval_seconds=0.05, grace_seconds=0.1))
    running = asyncio.create_task(worker.run())
    await asyncio.wait_for(started.wait(), 10)
    worker.stop()
    await asyncio.wait_for(running, 10)
    back = await app.get_job(job.id)
    assert (back.status, back.attempts, back.lease_token) == (JobState.PENDING, 0, None)


async def test_a_second_stop_does_not_wait_for_the_grace_period(app: JobApp) -> None:
    started = asyncio.Event()

    @app.job("stuck")
    async def stuck(ctx: JobContext, payload: dict[str, Any]) -> None:
        started.set()
        await asyncio.Event().wait()

    job = await app.enqueue("stuck")
    worker = app.worker(WorkerConfig(concurrency=1, poll_interval_seconds=0.05, grace_seconds=300))
    running = asyncio.create_task(worker.run())
    await asyncio.wait_for(started.wait(), 10)
    worker.stop()
    worker.stop()
    await asyncio.wait_for(running, 10)
    assert (await app.get_job(job.id)).status is JobState.PENDING


async def test_an_idle_worker_wakes_for_a_new_job(app: JobApp) -> None:
    @app.job("echo")
    async def echo(ctx: JobContext, payload: dict[str, Any]) -> dict[str, Any]:
        return payload

    worker = app.worker(WorkerConfig(concurrency=2, poll_interval_seconds=0.2))
    running = asyncio.create_task(worker.run())
    try:
        job = await app.enqueue("echo", {"n": 1})

        async def done() -> bool:
            return (await app.get_job(job.id)).status is JobState.SUCCEEDED

        await wait_until(done, timeout=10)
    finally:
        worker.stop()
        await asyncio.wait_for(running, 10)


async def test_a_lost_lease_stops_the_handler_and_writes_nothing(app: JobApp) -> None:
    started = asyncio.Event()
    cancelled = asyncio.Event()

    @app.job("watched")
    async def watched(ctx: JobContext, payload: dict[str, Any]) -> str:
        started.set()
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            cancelled.set()
            raise
        return "never"

    job = await app.enqueue("watched")
    worker = app.worker(WorkerConfig(concurrency=1, poll_interval_seconds=0.05, lease_seconds=0.3))
    running = asyncio.create_task(worker.run())
    await asyncio.wait_for(started.wait(), 10)
    held = await app.get_job(job.id)
    from async_jobs.domain.jobs import AttemptOutcome, LeaseToken, OutcomeKind

    assert held.lease_token is not None
    # Another party (a reaper, an operator) ends the attempt; the worker must notice.
    await app.store.record_outcomes(
        [AttemptOutcome(job.id, held.attempts, LeaseToken(held.lease_token), OutcomeKind.CANCELLED)]
    )
    await asyncio.wait_for(cancelled.wait(), 10)
    worker.stop()
    await asyncio.wait_for(running, 10)
    assert (await app.get_job(job.id)).status is JobState.CANCELLED


def app_request(job_type: str) -> Any:
    from async_jobs import EnqueueRequest

    return EnqueueRequest(type=job_type)


async def _claim_sizes(app: JobApp, handler: str, jobs: int, concurrency: int) -> list[int]:
    """Run ``jobs`` jobs of ``handler`` with a burst worker; the sizes its claims asked for."""
    asked: list[int] = []
    claim = app.store.claim_jobs

    async def recorded(request: Any) -> Any:
        asked.append(request.limit)
        return await claim(request)

    app.store.claim_jobs = recorded  # type: ignore[method-assign]
    await app.enqueue_many([app_request(handler) for _ in range(jobs)])
    worker = await app.run_worker(burst(concurrency=concurrency))
    assert worker.processed == jobs
    return asked


async def test_a_worker_claims_further_ahead_while_its_jobs_are_short(app: JobApp) -> None:
    @app.job("quick")
    async def quick(ctx: JobContext, payload: dict[str, Any]) -> None:
        return None

    asked = await _claim_sizes(app, "quick", 200, concurrency=2)
    # Default capacity: 2 running + 2 ahead; once the jobs prove short, 2 + 4 x 2.
    assert 4 < max(asked) <= 10, asked


async def test_a_worker_with_longer_jobs_claims_its_default_capacity(app: JobApp) -> None:
    @app.job("slow")
    async def slow(ctx: JobContext, payload: dict[str, Any]) -> None:
        await asyncio.sleep(0.02)  # wait-ok: the job's own work, above SHORT_JOB_SECONDS

    asked = await _claim_sizes(app, "slow", 12, concurrency=2)
    assert max(asked) <= 4, asked


async def _aheads(app: JobApp, handler: str, jobs: int, **kw: Any) -> list[int]:
    """How far ahead of its free slots a burst worker asked its transport to read, ask by
    ask (a broker transport reads that many messages beyond the slots)."""
    await app.enqueue_many([app_request(handler) for _ in range(jobs)])
    worker = app.worker(burst(concurrency=2, **kw))
    transport = worker._transport
    receive = transport.receive
    aheads: list[int] = []

    async def recorded(capacity: int, wait_seconds: float, ahead: int = 0) -> Any:
        aheads.append(ahead)
        return await receive(capacity, wait_seconds, ahead)

    transport.receive = recorded  # type: ignore[method-assign]
    await worker.run()
    assert worker.processed == jobs
    return aheads


async def test_a_worker_asks_to_read_ahead_only_while_its_jobs_are_short(app: JobApp) -> None:
    @app.job("quick")
    async def quick(ctx: JobContext, payload: dict[str, Any]) -> None:
        return None

    @app.job("slow")
    async def slow(ctx: JobContext, payload: dict[str, Any]) -> None:
        await asyncio.sleep(0.02)  # wait-ok: the job's own work, above SHORT_JOB_SECONDS

    quick_aheads = await _aheads(app, "quick", 100)
    # Nothing is known of the jobs at first; once they prove short, what it claims ahead.
    assert quick_aheads[0] == 0 and max(quick_aheads) == 2 * 4, quick_aheads
    assert set(await _aheads(app, "slow", 6)) == {0}
    assert set(await _aheads(app, "quick", 40, prefetch=2)) == {0}  # a prefetch of its own
