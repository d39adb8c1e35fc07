"""PostgreSQL rows made into jobs and webhook deliveries (``text_json``: rows whose jsonb and
uuid columns came as text, from a caller's connection)."""

from __future__ import annotations

import json
import uuid
from typing import Any

import asyncpg

from async_jobs.domain.jobs import (
    AttemptRecord,
    Job,
    JobError,
    JobId,
    JobState,
    LeaseToken,
    Priority,
    Progress,
)
from async_jobs.domain.retry import Backoff
from async_jobs.domain.webhooks import (
    DeliveryAttempt,
    DeliveryId,
    DeliveryStatus,
    WebhookDelivery,
)


def job_from_record(r: asyncpg.Record, text_json: bool = False) -> Job:
    """A job from a row. ``text_json``: jsonb and uuid columns came as text (see the query
    get_jobs_by_idempotency_key_as_text)."""
    _json = json.loads if text_json else _as_is
    _uuid = _parse_uuid if text_json else _as_is
    percent = r["progress_percent"]
    history = _json(r["history"])
    backoff = r["backoff"] and _json(r["backoff"])
    job = Job(  # positional, in the order of Job's fields: this runs for every job claimed
        JobId(_uuid(r["id"])),
        r["tenant_id"],
        r["use_case"],
        r["type"],
        _json(r["payload"]),
        Priority(r["priority"]),
        JobState(r["status"]),
        r["attempts"],
        r["max_attempts"],
        r["run_at"],
        r["delay_tolerance_seconds"],
        r["deadline_at"],
        r["timeout_seconds"],
        r["idempotency_key"],
        r["webhook_url"],
        None if percent is None else Progress(percent, r["progress_message"]),
        None if r["result"] is None else _json(r["result"]),
        JobError.from_json(r["error"] and _json(r["error"])),
        r["created_at"],
        r["updated_at"],
        r["started_at"],
        r["finished_at"],
        r["worker_id"],
        r["lease_token"] and LeaseToken(_uuid(r["lease_token"])),
        r["lease_expires_at"],
        r["cancel_requested"],
        r["reason"],
        [AttemptRecord.from_stored(h) for h in history] if history else [],
        None if backoff is None else Backoff.from_json(backoff),
        r["expires_at"],
        r.get("dispatch_id") and _uuid(r["dispatch_id"]),
        r.get("dispatch_expires_at"),
    )
    job.trace_context = r.get("trace_context")
    return job


def delivery_from_record(r: asyncpg.Record) -> WebhookDelivery:
    return WebhookDelivery(
        id=DeliveryId(r["id"]),
        job_id=r["job_id"],
        tenant_id=r["tenant_id"],
        url=r["url"],
        event=r["event"],
        job_finished_at=r["job_finished_at"],
        status=DeliveryStatus(r["status"]),
        attempts=r["attempts"],
        max_attempts=r["max_attempts"],
        next_attempt_at=r["next_attempt_at"],
        created_at=r["created_at"],
        lease_token=r["lease_token"],
        log=tuple(DeliveryAttempt.from_stored(a) for a in r["attempt_log"]),
    )


def percentiles(values: list[float] | None) -> dict[str, float | None]:
    p50, p95, p99 = values or (None, None, None)
    return {"p50": p50, "p95": p95, "p99": p99}


def _as_is(value: Any) -> Any:
    return value


def _parse_uuid(value: str) -> uuid.UUID:
    return uuid.UUID(value)
