"""Request and response models of the HTTP API, and the page cursor's encoding.

The routes answer JSON prepared by the domain (``Job.to_json()`` and the like), not these
response models: the models are there for the OpenAPI document, which declares them per
status, and the tests check real answers against them.
"""

from __future__ import annotations

import base64
import binascii
import json
import uuid
from datetime import UTC, datetime
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, AwareDatetime, BaseModel, ConfigDict, Field

from async_jobs.domain.errors import InvalidCursorError
from async_jobs.domain.jobs import JobId, JobState, PageCursor, Priority, Reason
from async_jobs.domain.requests import MAX_BATCH_SIZE, EnqueueRequest
from async_jobs.domain.retry import BackoffKind
from async_jobs.domain.webhooks import DeliveryStatus

# The numbers of a body are JSON numbers: pydantic's lax mode would take true as 1 and "600"
# as 600. Strict, an integer field takes integers only, a float field integers and floats.
StrictNumber = Annotated[float, Field(strict=True)]
StrictInteger = Annotated[int, Field(strict=True)]


class JobCreate(BaseModel):
    """Body of ``POST /jobs``. Ranges are checked by the domain, the same for every entry."""

    model_config = ConfigDict(extra="forbid")

    type: str = Field(description="Job type: the name a handler is registered under.")
    payload: dict[str, Any] = Field(default_factory=dict, description="A JSON object.")
    use_case: str | None = None
    tenant_id: str | None = None
    priority: Priority | None = None
    run_at: datetime | None = Field(default=None, description="When to run (with timezone).")
    delay_seconds: StrictNumber | None = Field(default=None, description="Or: run this much later.")
    delay_tolerance_seconds: StrictNumber | None = None
    max_attempts: StrictInteger | None = None
    timeout_seconds: StrictNumber | None = None
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


MAX_CURSOR_CHARS = 200  # a cursor this API gives out is about 120


def decode_cursor(text: str | None) -> PageCursor | None:
    if not text:
        return None
    try:
        if len(text) > MAX_CURSOR_CHARS:
            raise ValueError("too long")
        padded = text + "=" * (-len(text) % 4)
        data = json.loads(base64.urlsafe_b64decode(padded.encode()))
        if not isinstance(data, dict) or not all(isinstance(data.get(k), str) for k in ("t", "id")):
            raise ValueError("not a cursor's fields")
        created = datetime.fromisoformat(data["t"])
        if created.tzinfo is None:
            raise ValueError("naive time")
        # In UTC here: a time whose UTC form is outside years 1-9999 cannot reach a store.
        return PageCursor(created_at=created.astimezone(UTC), id=JobId(uuid.UUID(data["id"])))
    except (ValueError, KeyError, TypeError, OverflowError, binascii.Error, UnicodeError):
        raise InvalidCursorError("the cursor is not one this API gave out") from None


def _in_utc(value: datetime) -> datetime:
    try:
        return value.astimezone(UTC)
    except OverflowError:
        raise ValueError("the time is out of range (years 1 to 9999 in UTC)") from None


UtcTime = Annotated[AwareDatetime, AfterValidator(_in_utc)]
"""A time filter: with its time zone (a naive time is a 422), turned to UTC."""

NO_NUL = r"^[^\x00]*$"
"""A text filter: any text PostgreSQL can compare, i.e. without NUL characters."""


class CleanupRequest(BaseModel):
    """Body of ``POST /maintenance/cleanup``; without ``older_than_hours``, the configured
    retention per state applies."""

    model_config = ConfigDict(extra="forbid")

    older_than_hours: StrictNumber | None = Field(default=None, ge=0, le=1_000_000)


# -- answers --------------------------------------------------------------------------------
# Field for field what the domain's ``to_json`` methods write: every key is always present
# (null where the type allows it), so every field is required.


class ErrorInfo(BaseModel):
    code: str = Field(description="Stable and machine-readable, e.g. job_not_found.")
    message: str = Field(description="For people; may change.")
    details: dict[str, Any] = Field(
        default_factory=dict,
        description="Present when there is more to say: e.g. field, status, "
        "retry_after_seconds, or problems (a list of {field, message, type}) for a request "
        "the schema refuses.",
    )


class ErrorResponse(BaseModel):
    """Every error answer of the API (not ``/health``'s 503, which is a ``HealthResponse``)."""

    error: ErrorInfo


class ProgressInfo(BaseModel):
    percent: float = Field(description="0 to 100.")
    message: str | None


class JobErrorInfo(BaseModel):
    type: str = Field(description="The exception's type.")
    message: str
    traceback: str | None = Field(description="An excerpt, truncated.")


class BackoffInfo(BaseModel):
    kind: BackoffKind
    base_seconds: float
    factor: float
    cap_seconds: float
    jitter: float = Field(description="0 to 1: how much of each wait is random.")


class AttemptInfo(BaseModel):
    """An attempt that did not succeed."""

    attempt: int
    worker_id: str | None
    started_at: datetime | None
    finished_at: datetime
    outcome: str = Field(description="retry, failed, cancelled or worker_lost.")
    error_type: str | None
    error_message: str | None


class DeliveryAttemptInfo(BaseModel):
    at: datetime
    status_code: int | None = Field(description="The receiver's HTTP status, if it answered.")
    error: str | None
    duration_ms: float


class DeliveryInfo(BaseModel):
    id: uuid.UUID
    event: str = Field(description="job.succeeded, job.failed or job.cancelled.")
    status: DeliveryStatus
    attempts: list[DeliveryAttemptInfo]
    next_attempt_at: datetime | None = Field(description="While the delivery is pending.")


class WebhookInfo(BaseModel):
    status: DeliveryStatus | None = Field(description="The latest delivery's; null until made.")
    attempts: int = Field(description="Attempts of every delivery.")
    deliveries: list[DeliveryInfo] = Field(description="Oldest first.")


class JobResponse(BaseModel):
    """A job as ``Job.to_json()`` writes it (the lease token is never shown)."""

    id: uuid.UUID
    tenant_id: str
    use_case: str
    type: str
    payload: dict[str, Any]
    priority: Priority
    status: JobState
    attempts: int = Field(description="Attempts started so far.")
    max_attempts: int
    run_at: datetime = Field(description="When the job is, or was, due.")
    delay_tolerance_seconds: float
    deadline_at: datetime = Field(description="run_at + delay_tolerance_seconds.")
    deadline_missed: bool
    expires_at: datetime | None
    timeout_seconds: float | None
    idempotency_key: str | None
    webhook_url: str | None
    progress: ProgressInfo | None
    result: Any = Field(description="The handler's return value (any JSON), once succeeded.")
    error: JobErrorInfo | None = Field(description="The last error.")
    worker_id: str | None
    lease_expires_at: datetime | None
    cancel_requested: bool
    reason: Reason | None = Field(description="Why it last changed state, if not by its handler.")
    backoff: BackoffInfo | None = Field(description="The job's own retry policy, if it has one.")
    history: list[AttemptInfo] = Field(description="Attempts that did not succeed, latest 50.")
    created_at: datetime
    updated_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    webhook: WebhookInfo | None = Field(
        description="Its deliveries, for a job with a webhook_url (GET /jobs/{id} only)."
    )


class JobPageResponse(BaseModel):
    items: list[JobResponse] = Field(description="Newest first.")
    next_cursor: str | None = Field(description="Pass as ?cursor= for the next page; null: last.")


class JobBatchResponse(BaseModel):
    items: list[JobResponse] = Field(description="In the order of the request.")
    created: list[bool] = Field(
        description="Per job: false when its idempotency key gave back an existing job."
    )


class UseCaseResponse(BaseModel):
    name: str
    paused: bool
    updated_at: datetime | None


class UseCaseListResponse(BaseModel):
    items: list[UseCaseResponse]


class StatsCountInfo(BaseModel):
    use_case: str
    tenant_id: str
    status: JobState
    count: int


class ThroughputInfo(BaseModel):
    last_minute: dict[str, int] = Field(description="Terminal state -> jobs that reached it.")
    last_hour: dict[str, int]


class PercentilesInfo(BaseModel):
    """Seconds, over the last hour; null without data."""

    p50: float | None
    p95: float | None
    p99: float | None


class DeadlineMissesInfo(BaseModel):
    last_hour: int = Field(description="Jobs that started after their deadline_at.")
    overdue_pending: int = Field(description="Pending jobs past their deadline_at now.")


class StatsResponse(BaseModel):
    generated_at: datetime
    counts: list[StatsCountInfo]
    throughput: ThroughputInfo
    run_seconds: PercentilesInfo = Field(description="Start to finish.")
    queue_wait_seconds: PercentilesInfo = Field(description="Due (run_at) to start.")
    deadline_misses: DeadlineMissesInfo
    oldest_due_age_seconds: float | None = Field(
        description="How long the longest-waiting due pending job has waited."
    )


class CleanupResponse(BaseModel):
    deleted: int
    by_status: dict[str, int] = Field(description="Terminal state -> jobs deleted.")


class HealthResponse(BaseModel):
    status: Literal["ok", "unavailable"]
    store: str = Field(description='"ok", or why the store cannot be reached.')
    broker: str | None = Field(
        None,
        description='With the redis transport: "ok", or why Redis cannot be reached.',
    )
