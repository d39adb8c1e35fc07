"""Text from handlers that a store cannot keep as it is (a lone surrogate, what Python makes
of a file name that is not UTF-8; a NUL), on every store: the job it belongs to ends with a
readable error, and the jobs beside it are not held back."""

from __future__ import annotations

import asyncio
import dataclasses
import enum
from collections.abc import Callable, Sequence
from typing import Any

import pytest

from async_jobs import JobApp, JobContext, JobState, StoreError, StoreUnavailableError, WorkerConfig
from async_jobs.core.worker import Worker
from async_jobs.domain.errors import SchemaMissingError, StoreRefusedError
from async_jobs.domain.jobs import AttemptOutcome, ClaimRequest, JobId, OutcomeKind
from async_jobs.domain.scheduling import Limits
from async_jobs.transports.direct import DirectTransport
from tests.helpers import age_leases, wait_until

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


class Source(str, enum.Enum):  # noqa: UP042 - a StrEnum's str() is its value
    """A str enum: str() gives a member's name, the JSON encoders write its value."""

    LISTING = NAME
    NUL = "a\x00b"


# Results no store can keep, and why the job fails.
ODD_RESULTS = {
    "plain": ({"name": NAME}, "result is not valid Unicode text"),
    "enum": ({"source": Source.LISTING}, "result is not valid Unicode text"),
    "nul": ({"source": Source.NUL}, "result contains a NUL character"),
}


async def test_a_result_no_store_can_keep_fails_its_job_and_holds_back_no_other(
    app: JobApp,
) -> None:
    @app.job("list", max_attempts=1)
    async def list_files(ctx: JobContext, payload: dict[str, Any]) -> Any:
        return ODD_RESULTS[payload["kind"]][0]

    register_echo(app)
    odd = {kind: await app.enqueue("list", {"kind": kind}) for kind in ODD_RESULTS}
    good = await enqueue_echoes(app)
    await asyncio.wait_for(app.run_worker(burst()), BURST_DEADLINE)

    for kind, job in odd.items():
        failed = await app.get_job(job.id)
        assert (failed.status, failed.result) == (JobState.FAILED, None)
        assert failed.error is not None
        why = ODD_RESULTS[kind][1]
        assert (failed.error.type, failed.error.message) == (
            "ResultNotJson",
            f"the handler returned what JSON cannot hold: {why}",
        )
    await assert_echoed(app, good)


# -- an outcome the store refuses: the worker's outcome writer ------------------------------

Change = Callable[[list[AttemptOutcome]], list[AttemptOutcome]]


class _Writes:
    """The real store, with its outcome writes passed through ``change`` first: what a
    store would refuse, or an outage, without a way for a handler to cause it."""

    def __init__(self, store: Any, change: Change) -> None:
        self._store = store
        self._change = change
        self.calls = 0

    def __getattr__(self, name: str) -> Any:
        return getattr(self._store, name)

    async def record_outcomes(self, outcomes: Sequence[AttemptOutcome]) -> list[JobId]:
        self.calls += 1
        return list(await self._store.record_outcomes(self._change(list(outcomes))))


async def run_burst_worker(app: JobApp, change: Change) -> _Writes:
    """A burst worker whose outcome writes go through ``change``; it must end in time."""
    store = _Writes(app.store, change)
    claim = ClaimRequest("w", 8, 30.0, types=app.registry.types, limits=Limits())
    transport = DirectTransport(store, claim)  # type: ignore[arg-type]
    worker = Worker(app.registry, store, transport, burst(reap_interval_seconds=0))  # type: ignore[arg-type]
    await asyncio.wait_for(worker.run(), BURST_DEADLINE)
    return store


@pytest.mark.stores("sqlite", "postgres")
async def test_an_outcome_the_store_refuses_fails_its_job_and_the_rest_of_its_batch_lands(
    app: JobApp,
) -> None:
    register_echo(app)
    good = await enqueue_echoes(app, 7)
    spoiled = good.pop(3)

    def spoil(outcomes: list[AttemptOutcome]) -> list[AttemptOutcome]:
        """The success of ``spoiled`` with a result no check caught: a lone surrogate."""
        return [
            dataclasses.replace(o, result_json=f'"{NAME}"')
            if o.job_id == spoiled.id and o.kind is OutcomeKind.SUCCEEDED
            else o
            for o in outcomes
        ]

    await run_burst_worker(app, spoil)
    failed = await app.get_job(spoiled.id)
    assert (failed.status, failed.result) == (JobState.FAILED, None)
    assert failed.error is not None and failed.error.type == "OutcomeNotStored"
    assert failed.error.message.startswith(
        "the store refused this attempt's outcome (succeeded): UnicodeEncodeError:"
    )
    done = [await app.get_job(job.id) for job in good]
    assert [(j.status, j.result) for j in done] == [
        (JobState.SUCCEEDED, n) for n in (0, 1, 2, 4, 5, 6)
    ]


async def test_a_job_whose_every_outcome_is_refused_is_given_up_to_the_reaper(
    app: JobApp,
) -> None:
    register_echo(app)
    good = await enqueue_echoes(app, 3)
    refused = good.pop(0)

    def refuse(outcomes: list[AttemptOutcome]) -> list[AttemptOutcome]:
        if any(o.job_id == refused.id for o in outcomes):
            raise StoreRefusedError("injected: the store refuses this job's outcomes")
        return outcomes

    await run_burst_worker(app, refuse)  # it ends: the job is no longer held
    assert [(await app.get_job(job.id)).result for job in good] == [1, 2]
    left = await app.get_job(refused.id)
    assert left.status is JobState.RUNNING  # until its lease runs out, unrenewed
    await age_leases(app.store, [refused.id])
    assert [job.id for job in await app.store.reap_expired_leases(10)] == [refused.id]
    reaped = await app.get_job(refused.id)
    assert (reaped.status, reaped.attempts) == (JobState.PENDING, 1)
    assert [h.outcome for h in reaped.history] == ["worker_lost"]


async def test_outcomes_wait_out_an_outage_whole_and_are_written_as_they_were(
    app: JobApp,
) -> None:
    register_echo(app)
    good = await enqueue_echoes(app, 4)
    outages: list[StoreError] = [
        StoreUnavailableError("injected: the database is down"),
        SchemaMissingError("injected: the jobs table is gone"),
        # Any store error but a refusal, e.g. a standby that takes no writes after a failover
        # (PostgreSQL's 25006): outcomes a worker has are never thrown away for it.
        StoreError("injected: cannot execute UPDATE in a read-only transaction"),
    ]

    def down_twice(outcomes: list[AttemptOutcome]) -> list[AttemptOutcome]:
        if outages:
            raise outages.pop(0)
        return outcomes

    store = await run_burst_worker(app, down_twice)
    assert store.calls == 4  # the batch whole each time, never split
    await assert_echoed(app, good)
