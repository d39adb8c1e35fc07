"""Demo handlers, used by ``async-jobs serve`` when no handlers are configured.

- ``echo``: returns its payload.
- ``sleep``: payload ``{"seconds": s, "message": m}``;
  returns ``{"slept_seconds": s, "message": m}``.
- ``say_hello``: prints and returns "say hello" (the class style).
- ``fail``: raises; with ``{"times": n}`` it fails only its first n attempts, then succeeds.
"""

from __future__ import annotations

import asyncio
from typing import Any

from async_jobs.core.context import JobContext
from async_jobs.core.registry import job


@job("echo")
async def echo(ctx: JobContext, payload: dict[str, Any]) -> dict[str, Any]:
    return payload


@job("sleep")
async def sleep(ctx: JobContext, payload: dict[str, Any]) -> dict[str, Any]:
    seconds = float(payload.get("seconds", 1))
    await asyncio.sleep(seconds)
    return {"slept_seconds": payload.get("seconds", 1), "message": payload.get("message")}


@job("say_hello", priority="medium")
class SayHelloJob:
    async def handle(self, ctx: JobContext, payload: dict[str, Any]) -> str:
        print("say hello", flush=True)
        return "say hello"


class DemoFailure(Exception):
    """What the ``fail`` demo raises."""


@job("fail", max_attempts=3)
def fail(ctx: JobContext, payload: dict[str, Any]) -> dict[str, Any]:
    times = payload.get("times")
    if times is None or ctx.attempt <= int(times):
        raise DemoFailure(payload.get("message", f"failing on attempt {ctx.attempt}"))
    return {"succeeded_on_attempt": ctx.attempt}
