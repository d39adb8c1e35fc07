"""Readiness: is every component this process needs answering now?

Each check is a named coroutine; ``check_ready`` runs them at once, each under a timeout,
and reports one entry per component with its latency, so that a probe (Kubernetes, ECS, a
load balancer, ``async-jobs health``) sees which part is down and how slow the rest is.
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from async_jobs.domain.errors import AsyncJobsError

CHECK_TIMEOUT_SECONDS = 3.0

# A check returns a short detail (or None) when its component is ready, else raises.
Check = Callable[[], Awaitable[str | None]]


class NotReadyError(Exception):
    """A check's component answers but cannot serve yet (e.g. migrations not applied)."""


@dataclasses.dataclass(frozen=True, slots=True)
class ComponentHealth:
    name: str
    ok: bool
    latency_ms: float
    detail: str | None = None

    def to_json(self) -> dict[str, Any]:
        body: dict[str, Any] = {
            "status": "ok" if self.ok else "unavailable",
            "latency_ms": round(self.latency_ms, 2),
        }
        if self.detail:
            body["detail"] = self.detail
        return body


@dataclasses.dataclass(frozen=True, slots=True)
class Readiness:
    components: tuple[ComponentHealth, ...]

    @property
    def ok(self) -> bool:
        return all(c.ok for c in self.components)

    @property
    def http_status(self) -> int:
        return 200 if self.ok else 503

    def to_json(self) -> dict[str, Any]:
        return {
            "status": "ok" if self.ok else "unavailable",
            "components": {c.name: c.to_json() for c in self.components},
        }


async def check_ready(
    checks: Mapping[str, Check], timeout: float = CHECK_TIMEOUT_SECONDS
) -> Readiness:
    results = await asyncio.gather(*(_run(name, check, timeout) for name, check in checks.items()))
    return Readiness(tuple(results))


async def _run(name: str, check: Check, timeout: float) -> ComponentHealth:
    began = time.perf_counter()
    try:
        async with asyncio.timeout(timeout):
            detail = await check()
    except TimeoutError:
        return ComponentHealth(name, False, _ms(began), f"no answer within {timeout:g} s")
    except AsyncJobsError as exc:
        return ComponentHealth(name, False, _ms(began), exc.message)
    except NotReadyError as exc:
        return ComponentHealth(name, False, _ms(began), str(exc))
    except Exception as exc:  # a probe reports, it never raises
        return ComponentHealth(name, False, _ms(began), f"{type(exc).__name__}: {exc}")
    return ComponentHealth(name, True, _ms(began), detail)


def _ms(began: float) -> float:
    return (time.perf_counter() - began) * 1000.0
