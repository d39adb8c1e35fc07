"""Handlers for the reliability scenarios. Each writes an execution ledger (one JSON line per
start and per end, appended to the file named by ``AJ_TEST_LEDGER``) so that tests can
compare what really ran with what the store says."""

from __future__ import annotations

import asyncio
import json
import os
import time
from pathlib import Path
from typing import Any

from async_jobs import Backoff, JobContext, job


def record(event: str, ctx: JobContext, **extra: Any) -> None:
    line = {
        "event": event,
        "job": str(ctx.job.id),
        "attempt": ctx.attempt,
        "pid": os.getpid(),
        "t": time.time(),
        **extra,
    }
    path = os.environ.get("AJ_TEST_LEDGER")
    if path:
        with open(path, "a", encoding="utf-8") as ledger:  # one small write: atomic append
            ledger.write(json.dumps(line) + "\n")


def read_ledger(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


@job("work")
async def work(ctx: JobContext, payload: dict[str, Any]) -> dict[str, Any]:
    """Sleeps ``seconds``; with ``hang_on_attempt`` it hangs forever on that attempt."""
    record("start", ctx)
    if payload.get("hang_on_attempt") == ctx.attempt:
        await asyncio.Event().wait()
    await asyncio.sleep(float(payload.get("seconds", 0)))  # wait-ok: the job's simulated work
    record("end", ctx)
    return {"n": payload.get("n"), "attempt": ctx.attempt}


@job("always_raises", max_attempts=3, backoff=Backoff.constant(0.6, jitter=0.5))
async def always_raises(ctx: JobContext, payload: dict[str, Any]) -> None:
    record("start", ctx)
    raise RuntimeError(f"attempt {ctx.attempt} failed")


@job("exits_process", max_attempts=2)
def exits_process(ctx: JobContext, payload: dict[str, Any]) -> None:
    record("start", ctx)
    os._exit(17)
