"""Handlers the browser suite's server runs (with the demo handlers)."""

from __future__ import annotations

import asyncio
from typing import Any

from async_jobs.core.context import JobContext
from async_jobs.core.registry import job


@job("steps", use_case="steps")
async def steps(ctx: JobContext, payload: dict[str, Any]) -> dict[str, Any]:
    """Reports its progress in ``steps`` steps of ``pause`` seconds each."""
    count = int(payload.get("steps", 10))
    for done in range(1, count + 1):
        await asyncio.sleep(float(payload.get("pause", 0.5)))  # wait-ok: the work itself
        await ctx.progress(100 * done / count, f"step {done} of {count}")
    return {"steps": count}


@job("hold", use_case="hold")
async def hold(ctx: JobContext, payload: dict[str, Any]) -> None:
    """Runs until cancelled (or a minute)."""
    await ctx.progress(5, "holding")
    await asyncio.sleep(60)  # wait-ok: a long job, ended by cancellation
