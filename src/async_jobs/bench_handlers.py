"""The handlers ``async-jobs bench`` runs: jobs that do nothing, so that what is measured is
the queue itself (claim, dispatch, outcome) and not the work.

The worker process of the benchmark loads them with ``--handlers async_jobs.bench_handlers``.
"""

from __future__ import annotations

import time
from typing import Any

from async_jobs.core.context import JobContext
from async_jobs.core.registry import job


@job("noop")
async def noop(ctx: JobContext, payload: dict[str, Any]) -> None:
    """Does nothing: the drain measures the queue's own cost per job."""


@job("noop_timed")
async def noop_timed(ctx: JobContext, payload: dict[str, Any]) -> dict[str, float]:
    """Does nothing but note when it started (wall clock, seconds since the epoch); the
    benchmark subtracts the enqueue time it put in the payload."""
    return {"started": time.time()}
