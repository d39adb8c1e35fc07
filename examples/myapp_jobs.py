"""Handlers of an example application, in both styles.

Run them with a worker:  async-jobs worker --handlers examples.myapp_jobs --concurrency 50
"""

from __future__ import annotations

from typing import Any

from async_jobs import JobContext, NonRetryableError, job


@job("send_email", use_case="notifications", max_attempts=5, timeout_seconds=30, priority="high")
async def send_email(ctx: JobContext, payload: dict[str, Any]) -> dict[str, Any]:
    """A decorated async function: (ctx, payload) -> JSON result."""
    if "@" not in payload.get("to", ""):
        raise NonRetryableError(f"not an address: {payload.get('to')!r}")
    ctx.logger.info("sending to %s (attempt %d)", payload["to"], ctx.attempt)
    return {"sent_to": payload["to"]}


@job("resize_image", use_case="media", timeout_seconds=120)
def resize_image(ctx: JobContext, payload: dict[str, Any]) -> dict[str, int]:
    """A sync function runs in the worker's thread pool, so it may block."""
    width, height = int(payload["width"]), int(payload["height"])
    return {"width": width // 2, "height": height // 2}


@job(priority="medium")
class SayHelloJob:
    """A class with handle(): registered as "say_hello" (the class name, snake_case, without
    "Job")."""

    async def handle(self, ctx: JobContext, payload: dict[str, Any]) -> str:
        print("say hello", flush=True)
        return "say hello"
