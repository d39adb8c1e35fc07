"""Transport conformance: the same worker cases against both transports, on PostgreSQL.

- ``direct``: the worker claims straight from the store.
- ``sqs``: the leading scheduler dispatches job tickets to an SQS queue (a local moto server)
  and the worker receives them.
- ``redis``: the leading scheduler adds job tickets to a Redis stream (the local Redis, keys
  under a prefix of the test's own) and the worker reads them through its consumer group.

The broker transports have no burst mode, so every case runs a worker (and, for sqs and
redis, a leading scheduler) until a condition read back from the store holds, then stops it.
Every case is offered by every transport: none is dropped. With a broker, each case also
checks that the queue (stream) is left empty (every message deleted once its job's outcome
was written).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
from collections.abc import AsyncIterator, Sequence
from typing import Any

import pytest

from async_jobs import (
    Backoff,
    EnqueueRequest,
    JobApp,
    JobContext,
    JobState,
    NonRetryableError,
)
from async_jobs.core.settings import Settings
from async_jobs.core.worker import Worker
from async_jobs.domain.jobs import Job
from async_jobs.transports.sqs import SqsClient, create_queues
from tests.helpers import SqsServer, register_handler_styles, register_held_job, wait_until
from tests.integration.test_redis_transport import drained as stream_drained
from tests.integration.test_redis_transport import redis_client, redis_settings
from tests.integration.test_sqs_transport import (
    all_ended,
    drained,
    queue_of,
    running,
    sqs_settings,
)

pytestmark = pytest.mark.postgres

NO_WAIT = Backoff.constant(0, jitter=0)
TRANSPORTS = ("direct", "sqs", "redis")


@dataclasses.dataclass
class Rig:
    """An opened app on one transport, and (for sqs) a client to look into its queue."""

    app: JobApp
    transport: str
    client: SqsClient | None = None

    def serve(self, concurrency: int = 4) -> contextlib.AbstractAsyncContextManager[Worker]:
        """A running worker (and, for sqs, a leading scheduler to dispatch) until the block
        ends."""
        return running(self.app, scheduler=self.transport != "direct", concurrency=concurrency)

    async def finished(self, jobs: Sequence[Job], timeout: float = 20.0) -> None:
        """Wait until every job has ended and, for sqs, its message is gone."""
        await wait_until(lambda: all_ended(self.app, [job.id for job in jobs]), timeout=timeout)
        await self.queue_empty(timeout)

    async def queue_empty(self, timeout: float = 10.0) -> None:
        if self.transport == "redis":
            await wait_until(lambda: stream_drained(self.app), timeout=timeout)
        if self.client is not None:
            client = self.client
            await wait_until(lambda: drained(client, queue_of(self.app)), timeout=timeout)

    async def status_is(self, job: Job, *states: JobState) -> bool:
        return (await self.app.get_job(job.id)).status in states


@pytest.fixture(params=TRANSPORTS)
def transport_settings(request: pytest.FixtureRequest, pg_database: str) -> Settings:
    """Settings for a fresh database on each transport in turn (sqs: a queue of its own)."""
    if request.param == "sqs":
        server: SqsServer = request.getfixturevalue("sqs_server")
        return sqs_settings(pg_database, server)
    if request.param == "redis":
        return redis_settings(pg_database)
    return Settings(db_dsn=pg_database, lease_seconds=10.0, poll_interval_seconds=0.05)


@pytest.fixture
async def rig(transport_settings: Settings) -> AsyncIterator[Rig]:
    app = JobApp(settings=transport_settings)
    async with app:
        if transport_settings.transport == "redis":
            async with redis_client(app):
                yield Rig(app, "redis")
            return
        if transport_settings.transport != "sqs":
            yield Rig(app, "direct")
            return
        await create_queues(app.sqs_config(), 3)
        client = SqsClient(app.sqs_config())
        await client.open()
        try:
            yield Rig(app, "sqs", client)
        finally:
            await client.close()


async def test_async_sync_and_class_handlers_run_once_each(rig: Rig) -> None:
    app = rig.app
    GreetJob, threads = register_handler_styles(app)

    jobs = [
        await app.enqueue("add", {"a": 2, "b": 3}),
        await app.enqueue("blocking"),
        await app.enqueue(GreetJob, {"name": "ada"}),
    ]
    async with rig.serve() as worker:
        await rig.finished(jobs)
    await rig.queue_empty()
    assert worker.processed == 3
    done = {job.type: await app.get_job(job.id) for job in jobs}
    assert {t: (j.status, j.attempts, j.result) for t, j in done.items()} == {
        "add": (JobState.SUCCEEDED, 1, 5),
        "blocking": (JobState.SUCCEEDED, 1, "done"),
        "greet": (JobState.SUCCEEDED, 1, {"hello": "ada", "attempt": 1}),
    }
    assert all(j.error is None and j.history == [] for j in done.values())
    assert all(j.finished_at is not None and j.lease_token is None for j in done.values())
    assert len(threads) == 1 and threads[0].startswith("async-jobs")


async def test_a_failing_handler_is_retried_until_failed_and_one_recovers(rig: Rig) -> None:
    app = rig.app
    calls: list[int] = []

    @app.job("flaky", max_attempts=3, backoff=NO_WAIT)
    async def flaky(ctx: JobContext, payload: dict[str, Any]) -> None:
        calls.append(ctx.attempt)
        raise ValueError(f"bad attempt {ctx.attempt}")

    @app.job("recovers", backoff=NO_WAIT)
    async def recovers(ctx: JobContext, payload: dict[str, Any]) -> int:
        if ctx.attempt < 2:
            raise RuntimeError("not yet")
        return ctx.attempt

    failing = await app.enqueue("flaky")
    recovering = await app.enqueue("recovers", max_attempts=5)
    async with rig.serve():
        await rig.finished([failing, recovering])
    await rig.queue_empty()

    failed = await app.get_job(failing.id)
    assert calls == [1, 2, 3]
    assert (failed.status, failed.attempts, failed.result) == (JobState.FAILED, 3, None)
    assert failed.error is not None
    assert (failed.error.type, failed.error.message) == ("ValueError", "bad attempt 3")
    assert failed.error.traceback and "bad attempt 3" in failed.error.traceback
    assert [h.outcome for h in failed.history] == ["retry", "retry", "failed"]
    assert all(h.error_type == "ValueError" for h in failed.history)

    done = await app.get_job(recovering.id)
    assert (done.status, done.attempts, done.result) == (JobState.SUCCEEDED, 2, 2)
    assert [(h.outcome, h.error_type) for h in done.history] == [("retry", "RuntimeError")]


async def test_non_retryable_errors_fail_at_once(rig: Rig) -> None:
    app = rig.app

    @app.job("refuses", max_attempts=5, backoff=NO_WAIT)
    async def refuses(ctx: JobContext, payload: dict[str, Any]) -> None:
        raise NonRetryableError("never going to work")

    @app.job("picky", max_attempts=5, backoff=NO_WAIT, non_retryable=(KeyError,))
    async def picky(ctx: JobContext, payload: dict[str, Any]) -> None:
        raise KeyError("missing")

    refused = await app.enqueue("refuses")
    listed = await app.enqueue("picky")
    async with rig.serve():
        await rig.finished([refused, listed])
    await rig.queue_empty()
    for job, error_type in ((refused, "NonRetryableError"), (listed, "KeyError")):
        done = await app.get_job(job.id)
        assert (done.status, done.attempts) == (JobState.FAILED, 1)
        assert done.error is not None and done.error.type == error_type
        assert [h.outcome for h in done.history] == ["failed"]


async def test_a_slow_async_handler_times_out(rig: Rig) -> None:
    app = rig.app

    @app.job("slow", timeout_seconds=0.1, max_attempts=1)
    async def slow(ctx: JobContext, payload: dict[str, Any]) -> None:
        await asyncio.Event().wait()

    job = await app.enqueue("slow")
    async with rig.serve():
        await rig.finished([job])
    await rig.queue_empty()
    done = await app.get_job(job.id)
    assert (done.status, done.attempts, done.result) == (JobState.FAILED, 1, None)
    assert done.error is not None and done.error.type == "Timeout"


async def test_concurrency_is_bounded_by_the_worker(rig: Rig) -> None:
    app = rig.app
    active = 0
    peak = 0
    full = asyncio.Event()  # set once as many handlers run as the worker allows

    @app.job("busy")
    async def busy(ctx: JobContext, payload: dict[str, Any]) -> int:
        nonlocal active, peak
        active += 1
        peak = max(peak, active)
        try:
            if active >= 3:
                full.set()
            await asyncio.wait_for(full.wait(), 10)  # hold the slot until the others start
            await asyncio.sleep(0.01)  # wait-ok: the job's own work
        finally:
            active -= 1
        return int(payload["n"])

    jobs = await app.enqueue_many([EnqueueRequest("busy", {"n": n}) for n in range(10)])
    async with rig.serve(concurrency=3) as worker:
        await rig.finished(jobs)
    await rig.queue_empty()
    assert worker.processed == 10
    assert peak == 3
    for job in jobs:
        done = await app.get_job(job.id)
        assert (done.status, done.attempts, done.result) == (
            JobState.SUCCEEDED,
            1,
            job.payload["n"],
        )


async def test_cancelling_a_running_job_stops_it(rig: Rig) -> None:
    app = rig.app
    started = asyncio.Event()
    stopped: list[tuple[bool, bool]] = []

    @app.job("forever")
    async def forever(ctx: JobContext, payload: dict[str, Any]) -> None:
        started.set()
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            stopped.append((ctx.stop_requested, ctx.cancel_requested))
            raise

    job = await app.enqueue("forever")
    async with rig.serve():
        await wait_until(started.is_set, timeout=20)
        flagged = await app.cancel(job.id)
        assert flagged.status is JobState.RUNNING and flagged.cancel_requested
        await rig.finished([job])
    await rig.queue_empty()
    done = await app.get_job(job.id)
    assert (done.status, done.attempts, done.result) == (JobState.CANCELLED, 1, None)
    assert [h.outcome for h in done.history] == ["cancelled"]
    assert stopped == [(True, True)]


async def test_graceful_stop_lets_a_running_job_finish(rig: Rig) -> None:
    app = rig.app
    started, release = register_held_job(app)

    job = await app.enqueue("long")
    async with rig.serve() as worker:
        await wait_until(started.is_set, timeout=20)
        worker.stop()  # the first stop: no new jobs, running ones may finish
        release.set()
        await rig.finished([job])
    await rig.queue_empty()
    done = await app.get_job(job.id)
    assert (done.status, done.attempts, done.result) == (JobState.SUCCEEDED, 1, "finished")
    assert done.history == [] and done.lease_token is None


async def test_a_job_enqueued_while_the_worker_is_idle_is_picked_up(rig: Rig) -> None:
    app = rig.app

    @app.job("echo")
    async def echo(ctx: JobContext, payload: dict[str, Any]) -> dict[str, Any]:
        return payload

    async with rig.serve() as worker:
        first = await app.enqueue("echo", {"n": 1})
        await rig.finished([first])  # the worker has run it: nothing is left to do
        assert worker.processed == 1
        later = await app.enqueue("echo", {"n": 2})
        await rig.finished([later], timeout=10)
    await rig.queue_empty()
    for job, n in ((first, 1), (later, 2)):
        done = await app.get_job(job.id)
        assert (done.status, done.attempts, done.result) == (JobState.SUCCEEDED, 1, {"n": n})
