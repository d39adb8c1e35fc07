"""Run one attempt of one job and say how it ended; nothing here writes to a store."""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextvars
import dataclasses
import functools
import math
import traceback
from typing import Any

from async_jobs.core.context import JobContext
from async_jobs.core.registry import Handler
from async_jobs.domain.errors import InvalidJobError
from async_jobs.domain.jobs import AttemptOutcome, Job, JobError, LeaseToken, OutcomeKind
from async_jobs.domain.validation import checked_json, storable_text

DEFAULT_MAX_RESULT_BYTES = 1024 * 1024
DEFAULT_MAX_ERROR_CHARS = 4000


@dataclasses.dataclass(frozen=True, slots=True)
class AttemptLimits:
    """Bounds on what one attempt may leave in its job's row."""

    max_result_bytes: int = DEFAULT_MAX_RESULT_BYTES
    max_error_chars: int = DEFAULT_MAX_ERROR_CHARS  # message and traceback, each


class NonRetryableError(Exception):
    """Raise it (or a subclass) from a handler to fail the job at once, without retries."""


class RetryAfter(Exception):
    """Raise it from a handler to end this attempt and try again after ``seconds`` (instead
    of the handler's backoff). The attempt counts: once attempts are spent the job fails."""

    def __init__(self, seconds: float, message: str = "") -> None:
        if not (isinstance(seconds, int | float) and math.isfinite(seconds) and seconds >= 0):
            raise ValueError("RetryAfter needs a finite number of seconds >= 0")
        super().__init__(message or f"retry asked for in {seconds:g} s")
        self.seconds = float(seconds)


async def run_attempt(
    handler: Handler | None,
    job: Job,
    ctx: JobContext,
    threads: concurrent.futures.Executor,
    limits: AttemptLimits = AttemptLimits(),
) -> AttemptOutcome:
    """Call the handler under the job's timeout and turn what happens into an outcome."""
    if handler is None:
        error = JobError("UnknownJobType", f"no handler is registered for {job.type!r}")
        return _outcome(job, OutcomeKind.FAILED, error=error)
    timeout = job.timeout_seconds or handler.timeout_seconds
    scope = asyncio.timeout(timeout) if timeout is not None else None
    try:
        if scope is None:
            result = await _call(handler, ctx, threads)
        else:
            async with scope:
                result = await _call(handler, ctx, threads)
        encoded = _encode_result(result, limits)
    except TimeoutError as exc:
        if scope is None or not scope.expired():
            return failure_outcome(job, handler, error_of(exc, limits))
        ctx.request_stop()  # a sync handler's thread runs on: tell it to give up
        error = JobError("Timeout", f"the attempt ran longer than {timeout:g} s")
        return failure_outcome(job, handler, error)
    except _ResultRefused as exc:
        return _outcome(job, OutcomeKind.FAILED, error=exc.error)
    except RetryAfter as exc:
        return failure_outcome(job, handler, error_of(exc, limits), delay=exc.seconds)
    except NonRetryableError as exc:
        return _outcome(job, OutcomeKind.FAILED, error=error_of(exc, limits))
    except Exception as exc:
        if handler.non_retryable and isinstance(exc, handler.non_retryable):
            return _outcome(job, OutcomeKind.FAILED, error=error_of(exc, limits))
        return failure_outcome(job, handler, error_of(exc, limits))
    outcome = _outcome(job, OutcomeKind.SUCCEEDED, result=result)
    outcome.result_json = encoded
    return outcome


async def _call(handler: Handler, ctx: JobContext, threads: concurrent.futures.Executor) -> Any:
    if handler.is_async:
        return await handler.func(ctx, ctx.job.payload)
    # In a copy of this context: the thread's log lines carry the job's fields too.
    call = functools.partial(handler.func, ctx, ctx.job.payload)
    future = threads.submit(contextvars.copy_context().run, call)
    ctx.thread = future  # the worker accounts the slot until the thread really ends
    return await asyncio.wrap_future(future)


class _ResultRefused(Exception):
    def __init__(self, error: JobError) -> None:
        self.error = error


def _encode_result(result: Any, limits: AttemptLimits) -> str | None:
    """The result as JSON text, or ``_ResultRefused``: not JSON, or over the size limit.
    Neither is retried: the same handler would return the same kind of value again."""
    if result is None:
        return None
    try:
        text = checked_json(result, "result")
    except (InvalidJobError, ValueError, TypeError) as exc:
        raise _ResultRefused(
            JobError(
                "ResultNotJson",
                storable_text(f"the handler returned what JSON cannot hold: {exc}"),
            )
        ) from None
    if len(text) > limits.max_result_bytes or len(text.encode()) > limits.max_result_bytes:
        raise _ResultRefused(
            JobError(
                "ResultTooLarge",
                f"the result is {len(text.encode())} bytes of JSON, over the limit of "
                f"{limits.max_result_bytes} (ASYNC_JOBS_MAX_RESULT_BYTES); store large "
                "results elsewhere and return a reference",
            )
        )
    return text


def failure_outcome(
    job: Job, handler: Handler, error: JobError, delay: float | None = None
) -> AttemptOutcome:
    """Retry after ``delay`` (or the job's or handler's backoff) while attempts remain,
    else fail for good."""
    if job.attempts >= job.max_attempts:
        return _outcome(job, OutcomeKind.FAILED, error=error)
    if delay is None:
        delay = (job.backoff or handler.backoff).delay(job.attempts)
    return _outcome(job, OutcomeKind.RETRY, error=error, retry_delay_seconds=delay)


def released(job: Job) -> AttemptOutcome:
    return _outcome(job, OutcomeKind.RELEASED)


def cancelled(job: Job) -> AttemptOutcome:
    error = JobError("Cancelled", "the job was cancelled while it ran")
    return _outcome(job, OutcomeKind.CANCELLED, error=error)


def error_of(exc: BaseException, limits: AttemptLimits = AttemptLimits()) -> JobError:
    """The exception as the job's error, in text every store can keep (``storable_text``)."""
    limit = limits.max_error_chars
    trace = "".join(traceback.format_exception(exc))
    # Cut before escaping (the work stays bounded) and after (an escape is 6 characters).
    return JobError(
        type=storable_text(type(exc).__qualname__),
        message=storable_text(str(exc)[:limit])[:limit],
        traceback=storable_text(trace[-limit:])[-limit:],
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
