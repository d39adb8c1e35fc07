"""Run one attempt of one job and say how it ended; nothing here writes to a store."""

from __future__ import annotations

import asyncio
import concurrent.futures
import functools
import traceback
from typing import Any

from async_jobs.core.context import JobContext
from async_jobs.core.registry import Handler
from async_jobs.domain.errors import InvalidJobError
from async_jobs.domain.jobs import AttemptOutcome, Job, JobError, LeaseToken, OutcomeKind
from async_jobs.domain.validation import check_json_value

MAX_ERROR_MESSAGE = 2000
MAX_TRACEBACK = 4000


class NonRetryableError(Exception):
    """Raise it (or a subclass) from a handler to fail the job at once, without retries."""


async def run_attempt(
    handler: Handler | None,
    job: Job,
    ctx: JobContext,
    threads: concurrent.futures.Executor | None,
) -> AttemptOutcome:
    """Call the handler under the job's timeout and turn what happens into an outcome."""
    if handler is None:
        error = JobError("UnknownJobType", f"no handler is registered for {job.type!r}")
        return _outcome(job, OutcomeKind.FAILED, error=error)
    timeout = job.timeout_seconds or handler.timeout_seconds
    scope = asyncio.timeout(timeout)
    try:
        async with scope:
            result = await _call(handler, ctx, threads)
        check_json_value(result, "result")
    except TimeoutError as exc:
        if not scope.expired():
            return failure_outcome(job, handler, error_of(exc))
        ctx.request_stop()  # a sync handler's thread runs on: tell it to give up
        error = JobError("Timeout", f"the attempt ran longer than {timeout:g} s")
        return failure_outcome(job, handler, error)
    except InvalidJobError as exc:
        error = JobError("ResultNotJson", f"the handler returned what JSON cannot hold: {exc}")
        return _outcome(job, OutcomeKind.FAILED, error=error)
    except NonRetryableError as exc:
        return _outcome(job, OutcomeKind.FAILED, error=error_of(exc))
    except Exception as exc:
        return failure_outcome(job, handler, error_of(exc))
    return _outcome(job, OutcomeKind.SUCCEEDED, result=result)


async def _call(
    handler: Handler, ctx: JobContext, threads: concurrent.futures.Executor | None
) -> Any:
    if handler.is_async:
        return await handler.func(ctx, ctx.job.payload)
    loop = asyncio.get_running_loop()
    call = functools.partial(handler.func, ctx, ctx.job.payload)
    return await loop.run_in_executor(threads, call)


def failure_outcome(job: Job, handler: Handler, error: JobError) -> AttemptOutcome:
    """Retry after the handler's backoff while attempts remain, else fail for good."""
    if job.attempts >= job.max_attempts:
        return _outcome(job, OutcomeKind.FAILED, error=error)
    delay = handler.backoff.delay(job.attempts)
    return _outcome(job, OutcomeKind.RETRY, error=error, retry_delay_seconds=delay)


def released(job: Job) -> AttemptOutcome:
    return _outcome(job, OutcomeKind.RELEASED)


def error_of(exc: BaseException) -> JobError:
    trace = "".join(traceback.format_exception(exc))
    return JobError(
        type=type(exc).__qualname__,
        message=str(exc)[:MAX_ERROR_MESSAGE].replace("\x00", ""),
        traceback=trace[-MAX_TRACEBACK:].replace("\x00", ""),
    )


def _outcome(
    job: Job,
    kind: OutcomeKind,
    *,
    result: Any = None,
    error: JobError | None = None,
    retry_delay_seconds: float = 0.0,
) -> AttemptOutcome:
    assert job.lease_token is not None, "only claimed jobs have outcomes"
    return AttemptOutcome(
        job_id=job.id,
        attempt=job.attempts,
        lease_token=LeaseToken(job.lease_token),
        kind=kind,
        result=result,
        error=error,
        retry_delay_seconds=retry_delay_seconds,
    )
