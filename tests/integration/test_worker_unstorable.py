"""Text from handlers that a store cannot keep as it is (a lone surrogate, what Python makes
of a file name that is not UTF-8; a NUL), on every store: the job it belongs to ends with a
readable error, and the jobs beside it are not held back."""

from __future__ import annotations

import asyncio
from typing import Any

from async_jobs import JobApp, JobContext, JobState, WorkerConfig
from tests.helpers import wait_until

# What os.listdir gives for a file named b"caf\xff.txt", and how the job shows it.
NAME = b"caf\xff.txt".decode("utf-8", "surrogateescape")
SHOWN = "caf\\udcff.txt"
# Seconds. A burst worker held up by an outcome it cannot write never ends.
BURST_DEADLINE = 10


def burst(**kw: Any) -> WorkerConfig:
    # A linger long enough that the outcomes of a test's few jobs are written as one batch.
    values: dict[str, Any] = {"concurrency": 8, "burst": True, "outcome_linger_seconds": 0.05}
    return WorkerConfig(**(values | kw))


def register_echo(app: JobApp) -> None:
    @app.job("echo")
    async def echo(ctx: JobContext, payload: dict[str, Any]) -> Any:
        return payload["n"]


async def enqueue_echoes(app: JobApp, count: int = 5) -> list[Any]:
    return [await app.enqueue("echo", {"n": n}) for n in range(count)]


async def assert_echoed(app: JobApp, jobs: list[Any]) -> None:
    done = [await app.get_job(job.id) for job in jobs]
    assert [(j.status, j.result) for j in done] == [
        (JobState.SUCCEEDED, n) for n in range(len(jobs))
    ]


async def test_an_error_with_undecodable_text_fails_its_job_and_holds_back_no_other(
    app: JobApp,
) -> None:
    @app.job("parse", max_attempts=1)
    async def parse(ctx: JobContext, payload: dict[str, Any]) -> None:
        raise ValueError(f"cannot parse {NAME}\x00")

    register_echo(app)
    bad = await app.enqueue("parse")
    good = await enqueue_echoes(app)
    await asyncio.wait_for(app.run_worker(burst()), BURST_DEADLINE)

    failed = await app.get_job(bad.id)
    assert failed.status is JobState.FAILED
    assert failed.error is not None
    assert (failed.error.type, failed.error.message) == ("ValueError", f"cannot parse {SHOWN}")
    assert failed.error.traceback is not None and SHOWN in failed.error.traceback
    assert [h.error_message for h in failed.history] == [f"cannot parse {SHOWN}"]
    await assert_echoed(app, good)


async def test_a_progress_message_with_undecodable_text_is_stored_escaped(app: JobApp) -> None:
    finish = asyncio.Event()

    @app.job("scan")
    async def scan(ctx: JobContext, payload: dict[str, Any]) -> str:
        await ctx.progress(50, f"reading {payload['file'] or NAME}")
        await finish.wait()
        return "scanned"

    odd = await app.enqueue("scan", {"file": None})
    plain = await app.enqueue("scan", {"file": "plain.txt"})
    worker = app.worker(burst(progress_interval_seconds=0.05))
    running = asyncio.create_task(worker.run())

    async def both_shown() -> bool:
        jobs = [await app.get_job(job.id) for job in (odd, plain)]
        messages = [None if j.progress is None else j.progress.message for j in jobs]
        return messages == [f"reading {SHOWN}", "reading plain.txt"]

    try:
        # Both reports are written in one statement: the odd one held back the plain one.
        await wait_until(both_shown, timeout=5)
    finally:
        finish.set()
        await asyncio.wait_for(running, BURST_DEADLINE)
    done = [await app.get_job(job.id) for job in (odd, plain)]
    assert [(j.status, j.result) for j in done] == [(JobState.SUCCEEDED, "scanned")] * 2
