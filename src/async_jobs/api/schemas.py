"""Request models of the HTTP API, and the page cursor's encoding."""

from __future__ import annotations

import base64
import binascii
import json
import uuid
from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from async_jobs.app import MAX_BATCH_SIZE, EnqueueRequest
from async_jobs.domain.errors import InvalidCursorError
from async_jobs.domain.jobs import JobId, PageCursor, Priority


class JobCreate(BaseModel):
    """Body of ``POST /jobs``. Ranges are checked by the domain, the same for every entry."""

    model_config = ConfigDict(extra="forbid")

    type: str = Field(description="Job type: the name a handler is registered under.")
    payload: dict[str, Any] = Field(default_factory=dict, description="A JSON object.")
    use_case: str | None = None
    tenant_id: str | None = None
    priority: Priority | None = None
    run_at: datetime | None = Field(default=None, description="When to run (with timezone).")
    delay_seconds: float | None = Field(default=None, description="Or: run this much later.")
    delay_tolerance_seconds: float | None = None
    max_attempts: int | None = None
    timeout_seconds: float | None = None
    idempotency_key: str | None = None
    webhook_url: str | None = None
    backoff: dict[str, Any] | None = Field(
        default=None,
        description='This job\'s own retry policy, e.g. {"kind": "constant", "base_seconds": 5}; '
        "kinds: constant, linear, exponential; fields base_seconds, factor, cap_seconds, "
        "jitter (0-1).",
    )

    expires_at: datetime | None = Field(
        default=None,
        description="If the job has not started by then, it ends cancelled (reason expired).",
    )

    def to_request(self) -> EnqueueRequest:
        return EnqueueRequest(
            type=self.type,
            payload=self.payload,
            tenant_id=self.tenant_id,
            use_case=self.use_case,
            priority=self.priority,
            delay=self.delay_seconds,
            run_at=self.run_at,
            delay_tolerance_seconds=self.delay_tolerance_seconds,
            max_attempts=self.max_attempts,
            timeout_seconds=self.timeout_seconds,
            idempotency_key=self.idempotency_key,
            webhook_url=self.webhook_url,
            backoff=self.backoff,
            expires_at=self.expires_at,
        )


class JobBatchCreate(BaseModel):
    """Body of ``POST /jobs/batch``: jobs stored all together or not at all."""

    model_config = ConfigDict(extra="forbid")

    jobs: list[JobCreate] = Field(min_length=1, max_length=MAX_BATCH_SIZE)


def encode_cursor(cursor: PageCursor | None) -> str | None:
    if cursor is None:
        return None
    raw = json.dumps({"t": cursor.created_at.isoformat(), "id": str(cursor.id)})
    return base64.urlsafe_b64encode(raw.encode()).decode().rstrip("=")


def decode_cursor(text: str | None) -> PageCursor | None:
    if not text:
        return None
    try:
        padded = text + "=" * (-len(text) % 4)
        data = json.loads(base64.urlsafe_b64decode(padded.encode()))
        created = datetime.fromisoformat(data["t"])
        if created.tzinfo is None:
            raise ValueError("naive time")
        return PageCursor(created_at=created, id=JobId(uuid.UUID(data["id"])))
    except (ValueError, KeyError, TypeError, binascii.Error, UnicodeError):
        raise InvalidCursorError("the cursor is not one this API gave out") from None


class CleanupRequest(BaseModel):
    """Body of ``POST /maintenance/cleanup``; without ``older_than_hours``, the configured
    retention per state applies."""

    model_config = ConfigDict(extra="forbid")

    older_than_hours: float | None = Field(default=None, ge=0, le=1_000_000)
