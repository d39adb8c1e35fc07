"""The job record, its states and priorities, and the values that move between layers.

Nothing here does I/O. Stores turn rows into these values; the worker, the API and the CLI
only ever see these values.

Treat every value here as immutable. ``Job``, ``NewJob`` and ``AttemptOutcome`` are made once
or more per job on the hot path, where a frozen dataclass's ``__init__`` (one
``object.__setattr__`` per field) cost four times a plain one; so those three are not frozen,
and code changes them only through ``dataclasses.replace``.
"""

from __future__ import annotations

import dataclasses
import enum
import os
import time
import uuid
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from typing import Any, NewType

from async_jobs.domain.retry import Backoff
from async_jobs.domain.scheduling import Limits
from async_jobs.domain.webhooks import WebhookState

JobId = NewType("JobId", uuid.UUID)
LeaseToken = NewType("LeaseToken", uuid.UUID)

JsonObject = dict[str, Any]

DEFAULT_TENANT = "default"
DEFAULT_USE_CASE = "default"
DEFAULT_MAX_ATTEMPTS = 3
DEFAULT_DELAY_TOLERANCE_SECONDS = 300.0
MAX_HISTORY = 50  # attempts kept in a job's history (the latest ones)
ERROR_MESSAGE_LIMIT = 500  # characters of an error message kept in a history entry


class JobState(enum.StrEnum):
    """Where a job is in its life. Mirrored by the PostgreSQL enum ``job_state``.

    - ``pending``: stored, waiting for its ``run_at``, a retry's backoff or a free slot.
    - ``queued``: handed to a broker transport, not yet claimed by a worker.
    - ``running``: claimed by one worker under a lease (attempt number + lease token).
    - ``succeeded``, ``failed``, ``cancelled``: terminal; the recorded outcome.
    """

    PENDING = "pending"
    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"

    @property
    def is_terminal(self) -> bool:
        return self in TERMINAL_STATES


TERMINAL_STATES = frozenset({JobState.SUCCEEDED, JobState.FAILED, JobState.CANCELLED})


class Priority(enum.StrEnum):
    """Dispatch priority; declaration order is the order of importance (first runs first)."""

    CRITICAL = "critical"
    HIGH = "high"
    MEDIUM = "medium"
    LOW = "low"

    @property
    def rank(self) -> int:
        """0 for critical up to 3 for low: sort ascending to run the most important first."""
        return _PRIORITY_RANK[self]


_PRIORITY_RANK = {p: i for i, p in enumerate(Priority)}


@dataclasses.dataclass(frozen=True, slots=True)
class JobError:
    """The last error of a job: exception type, message and a traceback excerpt (truncated)."""

    type: str
    message: str
    traceback: str | None = None

    def to_json(self) -> JsonObject:
        return {"type": self.type, "message": self.message, "traceback": self.traceback}

    @classmethod
    def from_json(cls, data: Mapping[str, Any] | None) -> JobError | None:
        if not data:
            return None
        return cls(
            type=str(data.get("type", "")),
            message=str(data.get("message", "")),
            traceback=data.get("traceback"),
        )


@dataclasses.dataclass(frozen=True, slots=True)
class Progress:
    """How far a running job says it is: a percentage 0-100 and an optional message."""

    percent: float
    message: str | None = None


class Reason(enum.StrEnum):
    """Why a job last changed state other than by its handler's own outcome."""

    WORKER_LOST = "worker_lost"  # its lease expired: the worker died or hung
    CANCELLED = "cancelled"  # someone asked for it to be cancelled
    MANUAL_RETRY = "manual_retry"  # someone sent a failed or cancelled job back
    EXPIRED = "expired"  # it could not start before its expires_at


@dataclasses.dataclass(frozen=True, slots=True)
class AttemptRecord:
    """One attempt that did not succeed, in a job's history. ``outcome`` is ``retry``,
    ``failed``, ``cancelled`` or ``worker_lost``; error texts are truncated by the store. (A
    successful attempt is the job itself: ``attempts``, ``worker_id``, ``started_at``,
    ``finished_at``, ``result``.)"""

    attempt: int
    worker_id: str | None
    started_at: datetime | None
    finished_at: datetime
    outcome: str
    error_type: str | None = None
    error_message: str | None = None

    def to_json(self) -> JsonObject:
        return {
            "attempt": self.attempt,
            "worker_id": self.worker_id,
            "started_at": _iso(self.started_at),
            "finished_at": _iso(self.finished_at),
            "outcome": self.outcome,
            "error_type": self.error_type,
            "error_message": self.error_message,
        }

    @classmethod
    def from_stored(cls, data: Mapping[str, Any]) -> AttemptRecord:
        """From the form every store keeps: times as unix epoch seconds."""
        started = data.get("started_at")
        return cls(
            attempt=int(data["attempt"]),
            worker_id=data.get("worker_id"),
            started_at=None if started is None else datetime.fromtimestamp(started, UTC),
            finished_at=datetime.fromtimestamp(data["finished_at"], UTC),
            outcome=str(data["outcome"]),
            error_type=data.get("error_type"),
            error_message=data.get("error_message"),
        )


@dataclasses.dataclass(slots=True)  # not frozen: see the module docstring
class Job:
    """A stored job as the store last saw it. Times are timezone-aware UTC datetimes."""

    id: JobId
    tenant_id: str
    use_case: str
    type: str
    payload: JsonObject
    priority: Priority
    status: JobState
    attempts: int
    max_attempts: int
    run_at: datetime
    delay_tolerance_seconds: float
    deadline_at: datetime
    timeout_seconds: float | None
    idempotency_key: str | None
    webhook_url: str | None
    progress: Progress | None
    result: Any
    error: JobError | None
    created_at: datetime
    updated_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    worker_id: str | None = None
    lease_token: LeaseToken | None = None
    lease_expires_at: datetime | None = None
    cancel_requested: bool = False
    reason: str | None = None
    history: list[AttemptRecord] = dataclasses.field(default_factory=list)
    backoff: Backoff | None = None
    expires_at: datetime | None = None
    # While queued (handed to a broker): the dispatch's id, which its message carries, and
    # when the dispatch lapses unless a worker has claimed the job by then.
    dispatch_id: uuid.UUID | None = None
    dispatch_expires_at: datetime | None = None
    # Its webhook deliveries: read by ``JobApp.get_job`` only (None in lists, and for a job
    # without a webhook_url).
    webhook: WebhookState | None = None
    # W3C trace context (JSON: traceparent, tracestate) captured at enqueue, when tracing.
    trace_context: str | None = None

    @property
    def deadline_missed(self) -> bool:
        """Started after its deadline, or, not started yet, past it now."""
        if self.started_at is not None:
            return self.started_at > self.deadline_at
        if self.status.is_terminal:
            return False
        return datetime.now(UTC) > self.deadline_at

    def to_json(self) -> JsonObject:
        """The job as the HTTP API and the CLI show it (lease token left out: it is a secret)."""
        return {
            "id": str(self.id),
            "tenant_id": self.tenant_id,
            "use_case": self.use_case,
            "type": self.type,
            "payload": self.payload,
            "priority": self.priority.value,
            "status": self.status.value,
            "attempts": self.attempts,
            "max_attempts": self.max_attempts,
            "run_at": _iso(self.run_at),
            "delay_tolerance_seconds": self.delay_tolerance_seconds,
            "deadline_at": _iso(self.deadline_at),
            "deadline_missed": self.deadline_missed,
            "expires_at": _iso(self.expires_at),
            "timeout_seconds": self.timeout_seconds,
            "idempotency_key": self.idempotency_key,
            "webhook_url": self.webhook_url,
            "progress": _progress_json(self.progress),
            "result": self.result,
            "error": self.error.to_json() if self.error else None,
            "worker_id": self.worker_id,
            "lease_expires_at": _iso(self.lease_expires_at),
            "cancel_requested": self.cancel_requested,
            "reason": self.reason,
            "backoff": self.backoff.to_json() if self.backoff else None,
            "history": [entry.to_json() for entry in self.history],
            "created_at": _iso(self.created_at),
            "updated_at": _iso(self.updated_at),
            "started_at": _iso(self.started_at),
            "finished_at": _iso(self.finished_at),
            "webhook": None if self.webhook is None else self.webhook.to_json(),
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Job:
        """The inverse of ``to_json`` (a job as the HTTP API answers it): times parsed,
        ``deadline_missed`` recomputed rather than read, the lease token (never shown) None."""
        progress = data.get("progress")
        backoff = data.get("backoff")
        webhook = data.get("webhook")
        return cls(
            id=JobId(uuid.UUID(str(data["id"]))),
            tenant_id=str(data["tenant_id"]),
            use_case=str(data["use_case"]),
            type=str(data["type"]),
            payload=dict(data.get("payload") or {}),
            priority=Priority(data["priority"]),
            status=JobState(data["status"]),
            attempts=int(data["attempts"]),
            max_attempts=int(data["max_attempts"]),
            run_at=_parse_time(data["run_at"]),
            delay_tolerance_seconds=float(data["delay_tolerance_seconds"]),
            deadline_at=_parse_time(data["deadline_at"]),
            timeout_seconds=_optional_float(data.get("timeout_seconds")),
            idempotency_key=data.get("idempotency_key"),
            webhook_url=data.get("webhook_url"),
            progress=None
            if progress is None
            else Progress(float(progress["percent"]), progress.get("message")),
            result=data.get("result"),
            error=JobError.from_json(data.get("error")),
            created_at=_parse_time(data["created_at"]),
            updated_at=_parse_time(data["updated_at"]),
            started_at=_parse_optional_time(data.get("started_at")),
            finished_at=_parse_optional_time(data.get("finished_at")),
            worker_id=data.get("worker_id"),
            lease_token=None,
            lease_expires_at=_parse_optional_time(data.get("lease_expires_at")),
            cancel_requested=bool(data.get("cancel_requested", False)),
            reason=data.get("reason"),
            history=[_attempt_from_json(entry) for entry in data.get("history") or ()],
            backoff=None if backoff is None else Backoff.from_json(backoff),
            expires_at=_parse_optional_time(data.get("expires_at")),
            webhook=None if webhook is None else WebhookState.from_json(webhook),
        )


@dataclasses.dataclass(slots=True)  # not frozen: see the module docstring
class NewJob:
    """A validated request to store a job; see ``domain.validation.build_new_job``.

    ``delay_seconds`` is relative to the database clock at insert time; ``run_at``, when set,
    is absolute and wins.
    """

    id: JobId
    tenant_id: str
    use_case: str
    type: str
    payload: JsonObject
    payload_json: str  # the payload encoded once, at validation
    priority: Priority
    max_attempts: int
    delay_seconds: float
    run_at: datetime | None
    delay_tolerance_seconds: float
    timeout_seconds: float | None
    idempotency_key: str | None
    webhook_url: str | None
    # When the job was made: its id's time (``time_of_id``), from the enqueuing process's
    # clock, so that the order of created_at is the order of the ids in every store.
    created_at: datetime
    backoff: Backoff | None = None
    expires_at: datetime | None = None
    # Not stored: the tenant's max_pending in this use case, checked atomically at insert.
    max_pending: int | None = None
    trace_context: str | None = None  # see Job; set by the enqueuing app when tracing

    def times(self, now: datetime) -> tuple[datetime, datetime]:
        """The run_at and deadline of this job written at ``now``: run_at as given, else
        ``now`` plus the delay; the deadline, run_at plus the tolerance (``seconds``)."""
        run_at = self.run_at if self.run_at is not None else now + seconds(self.delay_seconds)
        return run_at, run_at + seconds(self.delay_tolerance_seconds)

    def stored(self, run_at: datetime, deadline_at: datetime, created_at: datetime) -> Job:
        """The job as a store has just written it, with the times its clock chose and
        ``created_at`` as it keeps it (``self.created_at``, or that time to the precision
        the store keeps)."""
        # Positional, in the order of Job's fields: this runs for every job enqueued, and
        # binding thirty keywords costs three times the call.
        job = Job(
            self.id,
            self.tenant_id,
            self.use_case,
            self.type,
            self.payload,
            self.priority,
            _PENDING,
            0,  # attempts
            self.max_attempts,
            run_at,
            self.delay_tolerance_seconds,
            deadline_at,
            self.timeout_seconds,
            self.idempotency_key,
            self.webhook_url,
            None,  # progress
            None,  # result
            None,  # error
            created_at,
            created_at,  # updated_at
            None,  # started_at
            None,  # finished_at
            None,  # worker_id
            None,  # lease_token
            None,  # lease_expires_at
            False,  # cancel_requested
            None,  # reason
            [],  # history
            self.backoff,
            self.expires_at,
        )
        if self.trace_context is not None:
            job.trace_context = self.trace_context
        return job


_PENDING = JobState.PENDING


class OutcomeKind(enum.StrEnum):
    """What a worker records at the end of an attempt."""

    SUCCEEDED = "succeeded"
    RETRY = "retry"  # back to pending after a delay; the attempt counts
    FAILED = "failed"  # terminal
    CANCELLED = "cancelled"  # terminal, cancellation honoured
    RELEASED = "released"  # handed back unstarted or on shutdown; the attempt does not count


@dataclasses.dataclass(slots=True)  # not frozen: see the module docstring
class AttemptOutcome:
    """The end of one attempt, fenced by the attempt number and lease token of the claim."""

    job_id: JobId
    attempt: int
    lease_token: LeaseToken
    kind: OutcomeKind
    result: Any = None
    error: JobError | None = None
    retry_delay_seconds: float = 0.0
    result_json: str | None = None  # ``result`` encoded once, when the attempt ended


@dataclasses.dataclass(frozen=True, slots=True)
class ProgressUpdate:
    """The latest progress of a running attempt, fenced like an outcome."""

    job_id: JobId
    attempt: int
    lease_token: LeaseToken
    percent: float
    message: str | None


@dataclasses.dataclass(frozen=True, slots=True)
class LeaseState:
    """What a lease renewal learnt of one job still held: whether cancellation was asked."""

    job_id: JobId
    cancel_requested: bool


@dataclasses.dataclass(frozen=True, slots=True)
class JobFilter:
    """Filters for listing jobs; ``None`` means "any"."""

    tenant_id: str | None = None
    status: JobState | None = None
    use_case: str | None = None
    type: str | None = None
    created_after: datetime | None = None
    created_before: datetime | None = None
    priority: Priority | None = None


@dataclasses.dataclass(frozen=True, slots=True)
class PageCursor:
    """Position in a newest-first listing: the last item's creation time and id."""

    created_at: datetime
    id: JobId


def listing_key(job: Job) -> tuple[datetime, JobId]:
    """The key that listings order jobs by, newest (largest) first; a cursor holds it."""
    return (job.created_at, job.id)


@dataclasses.dataclass(frozen=True, slots=True)
class JobPage:
    items: list[Job]
    next_cursor: PageCursor | None

    @classmethod
    def of(cls, items: list[Job], more: bool) -> JobPage:
        """A page of ``items``; ``more``: the listing goes on after its last job."""
        cursor = PageCursor(items[-1].created_at, items[-1].id) if more and items else None
        return cls(items=items, next_cursor=cursor)


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class ScanRequest:
    """A listing whose work is bounded (``JobStore.scan_jobs``): read at most ``budget`` jobs
    newest first after ``after``, return the first ``limit`` that match ``where``, and count
    the matches up to ``count_to``."""

    where: JobFilter
    limit: int
    budget: int
    after: PageCursor | None = None
    count_to: int = 0

    @property
    def wanted(self) -> int:
        """The matches the walk looks for before it stops: a page and one more (to know
        whether the listing goes on), or as many as it counts."""
        return max(self.limit + 1, self.count_to)


@dataclasses.dataclass(frozen=True, slots=True)
class JobScan:
    """What a bounded newest-first walk found (``JobStore.scan_jobs``).

    ``items``: the first matches, newest first. ``matched``: the matches the walk found, at
    least ``len(items)``; the walk stops once it has as many as it was asked to count, so
    that many means "at least". ``searched_to``: the last job the walk read when it spent
    its budget before it found that many (jobs older than it were not read); None when it
    found them all, or read every job there is. ``next_cursor``: where the listing goes on:
    after the last item when more jobs matched, else from ``searched_to``; None at the end.
    """

    items: list[Job]
    matched: int
    next_cursor: PageCursor | None
    searched_to: PageCursor | None

    @classmethod
    def of(cls, items: list[Job], hits: int, wanted: int, last_read: PageCursor | None) -> JobScan:
        """``hits`` matches found (at most ``wanted``); ``last_read``: the job the walk read
        last if it read its whole budget (None if fewer jobs were left)."""
        searched_to = last_read if hits < wanted else None
        if hits > len(items) and items:
            return cls(items, hits, PageCursor(items[-1].created_at, items[-1].id), searched_to)
        return cls(items, hits, searched_to, searched_to)


@dataclasses.dataclass(frozen=True, slots=True)
class ClaimRequest:
    """Ask the store for up to ``limit`` due jobs, leased to ``worker_id`` for a while.

    With ``dispatch``, the chosen jobs become ``queued`` instead (for a broker transport to
    carry to a worker): each gets a fresh dispatch id, and the dispatch lapses
    ``lease_seconds`` from now unless a worker claims the job first (``worker_id`` is then
    not written). Every limit applies alike: queued jobs hold their slots."""

    worker_id: str
    limit: int
    lease_seconds: float
    use_cases: tuple[str, ...] = ()  # empty: every use case
    types: tuple[str, ...] = ()  # empty: every type the store holds
    # Per-use-case concurrency and tenant quotas; the claim takes only what they allow.
    limits: Limits = dataclasses.field(default_factory=Limits)
    dispatch: bool = False


def dispatch_order(job: Job) -> tuple[int, datetime, datetime]:
    """The order in which a worker starts the jobs it claimed, the claim's own: priority,
    then deadline, then due time."""
    return (job.priority.rank, job.deadline_at, job.run_at)


def new_job_id() -> JobId:
    """A UUID version 7 (RFC 9562): 48 bits of Unix milliseconds, 12 bits of the fraction of
    the millisecond (its 4,096ths: RFC 9562's "increased clock precision"), then 62 random
    bits. The ids one process makes are strictly increasing, so they sort in the order they
    were made, and ids of different processes sort by the time they were made, to a fraction
    of a millisecond. So the primary key's index grows at its right edge instead of touching
    a random page per insert (fewer pages read and written, far fewer full-page images in
    the WAL after each checkpoint). Should the clock not have moved on since the last id, or
    moved back, the id takes the next value after the last one.

    This runs once per job enqueued, so it is made cheap: the random bits come from one
    read of the system's random source per 256 ids (with the version and variant bits
    already in place), and the UUID is made without ``UUID.__init__``'s parsing."""
    global _last_clock
    try:
        rest = _pop_random()
    except IndexError:
        _refill_random()
        rest = _pop_random()
    millis, nanos = divmod(_time_ns(), 1_000_000)
    clock = (millis & _MILLIS_MASK) << 12 | (nanos << 12) // 1_000_000
    if clock <= _last_clock:
        clock = _last_clock + 1
    _last_clock = clock
    job_id = _new_object(uuid.UUID)
    _set_attribute(job_id, "int", (clock >> 12) << 80 | (clock & 0xFFF) << 64 | rest)
    _set_attribute(job_id, "is_safe", _SAFE_UNKNOWN)
    return JobId(job_id)


def seconds(value: float) -> timedelta:
    """A number of seconds as PostgreSQL's ``make_interval(secs => value)`` makes it: times a
    million, rounded half to even, as microseconds. Every store computes a job's times with
    it, as PostgreSQL's statements do, so that they agree to the microsecond."""
    return timedelta(microseconds=round(value * 1e6))


def time_of_id(job_id: uuid.UUID) -> datetime:
    """When ``new_job_id`` made an id: its millisecond and the fraction of it, to the
    microsecond below. An id that is not a UUID version 7 tells no time: now."""
    value = job_id.int
    if value >> 76 & 0xF != 7:
        return datetime.now(UTC)
    return _UNIX_EPOCH + timedelta(
        microseconds=(value >> 80) * 1000 + (value >> 64 & 0xFFF) * 1000 // 4096
    )


def uuid_of_digits(digits: str) -> uuid.UUID:
    """The UUID of 32 hexadecimal digits its caller has already checked, made without
    ``UUID.__init__``'s parsing (a broker's ticket names two UUIDs, read once per job)."""
    value = _new_object(uuid.UUID)
    _set_attribute(value, "int", int(digits, 16))
    _set_attribute(value, "is_safe", _SAFE_UNKNOWN)
    return value


def _refill_random() -> None:
    raw = os.urandom(8 * 256)  # 64 bits per id, of which rand_b keeps 62
    _random_tails.extend(
        int.from_bytes(raw[i : i + 8], "big") & _RANDOM_BITS | _VERSION_AND_VARIANT
        for i in range(0, len(raw), 8)
    )


_MILLIS_MASK = (1 << 48) - 1
_UNIX_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
# The 80 bits after the milliseconds: version (4 bits, 7), rand_a (12: the fraction of the
# millisecond), variant (2, 0b10), rand_b (62: random).
_VERSION_AND_VARIANT = 0x7 << 76 | 0b10 << 62
_RANDOM_BITS = (1 << 62) - 1
_last_clock = 0  # the milliseconds and their fraction (60 bits) of the last id made
_time_ns = time.time_ns
_SAFE_UNKNOWN = uuid.SafeUUID.unknown  # an enum member: looked up once, not per id
_random_tails: list[int] = []
_pop_random = _random_tails.pop
_new_object = object.__new__
_set_attribute = object.__setattr__  # UUID forbids its own __setattr__
# A forked child must not make the ids its parent has yet to make.
os.register_at_fork(after_in_child=_random_tails.clear)


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value is not None else None


def _progress_json(progress: Progress | None) -> JsonObject | None:
    if progress is None:
        return None
    return {"percent": progress.percent, "message": progress.message}


def _parse_time(text: str) -> datetime:
    """An ISO 8601 time as ``to_json`` writes it; a time without a zone is taken as UTC."""
    value = datetime.fromisoformat(text)
    return value if value.tzinfo is not None else value.replace(tzinfo=UTC)


def _parse_optional_time(text: str | None) -> datetime | None:
    return None if text is None else _parse_time(text)


def _optional_float(value: Any) -> float | None:
    return None if value is None else float(value)


def _attempt_from_json(data: Mapping[str, Any]) -> AttemptRecord:
    """A history entry as ``AttemptRecord.to_json`` writes it."""
    return AttemptRecord(
        attempt=int(data["attempt"]),
        worker_id=data.get("worker_id"),
        started_at=_parse_optional_time(data.get("started_at")),
        finished_at=_parse_time(data["finished_at"]),
        outcome=str(data["outcome"]),
        error_type=data.get("error_type"),
        error_message=data.get("error_message"),
    )
