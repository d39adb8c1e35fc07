"""Handlers for the observability scenarios: each logs through its own logger (so the test
can see that the job's fields reach a handler's lines) and never logs its payload."""

from __future__ import annotations

import logging
from typing import Any

from async_jobs import Backoff, JobContext, job

log = logging.getLogger("observe.handler")


@job("obs_ok", use_case="obs")
async def obs_ok(ctx: JobContext, payload: dict[str, Any]) -> dict[str, Any]:
    log.info("handling an ok job")
    return payload  # the result holds the payload's marker: it must not be logged either


@job("obs_boom", use_case="obs", max_attempts=2, backoff=Backoff.constant(0.05, jitter=0))
def obs_boom(ctx: JobContext, payload: dict[str, Any]) -> None:
    log.info("handling a failing job in a thread")
    raise RuntimeError("boom on purpose")
