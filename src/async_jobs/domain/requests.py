"""What a caller asks for when it enqueues, and the request limits every entry point shares.

Here rather than in the composition root so that the HTTP client and the API's schemas can
build requests without loading the stores and transports (``import async_jobs.client`` stays
free of asyncpg, aiosqlite and aiobotocore)."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from datetime import datetime
from typing import Any

from async_jobs.domain.jobs import Priority
from async_jobs.domain.retry import Backoff

MAX_PAGE_SIZE = 1000
MAX_BATCH_SIZE = 1000


@dataclasses.dataclass(slots=True)  # not frozen: made per job, see domain.jobs' docstring
class EnqueueRequest:
    """One job of ``enqueue_many``; fields as the keyword arguments of ``enqueue``. Treat it
    as immutable (``dataclasses.replace`` makes a changed copy)."""

    type: str
    payload: Mapping[str, Any] | None = None
    tenant_id: str | None = None
    use_case: str | None = None
    priority: Priority | str | None = None
    delay: float | None = None
    run_at: datetime | None = None
    delay_tolerance_seconds: float | None = None
    max_attempts: int | None = None
    timeout_seconds: float | None = None
    idempotency_key: str | None = None
    webhook_url: str | None = None
    backoff: Backoff | Mapping[str, Any] | None = None
    expires_at: datetime | None = None
