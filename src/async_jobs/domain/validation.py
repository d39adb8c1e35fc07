"""Checks that turn a raw enqueue request into a ``NewJob`` or an ``InvalidJobError``.

Every entry point (Python, HTTP, CLI) goes through ``build_new_job``, so bad input is refused
the same way everywhere and never reaches a store.
"""

from __future__ import annotations

import dataclasses
import decimal
import json
import math
import re
import sys
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from typing import Any, overload

import orjson

from async_jobs.domain.errors import (
    IdempotencyConflictError,
    InvalidJobError,
    PayloadTooLargeError,
)
from async_jobs.domain.jobs import (
    DEFAULT_DELAY_TOLERANCE_SECONDS,
    DEFAULT_MAX_ATTEMPTS,
    DEFAULT_TENANT,
    DEFAULT_USE_CASE,
    AttemptOutcome,
    Job,
    JobFilter,
    JobId,
    JsonObject,
    NewJob,
    Priority,
    new_job_id,
    seconds,
    time_of_id,
)
from async_jobs.domain.retry import Backoff

MAX_PAYLOAD_BYTES = 256 * 1024
MAX_NAME_LENGTH = 200
MAX_KEY_LENGTH = 255
MAX_ATTEMPTS_LIMIT = 1000
MAX_DELAY_SECONDS = 366 * 24 * 3600.0
MAX_RUN_AT_AGE_SECONDS = 24 * 3600.0
LATEST_EXPIRY = datetime(9999, 12, 31, tzinfo=UTC)
MAX_TIMEOUT_SECONDS = 7 * 24 * 3600.0
MAX_JSON_DEPTH = 64


def build_new_job(
    job_type: str,
    payload: Mapping[str, Any] | None = None,
    *,
    tenant_id: str | None = None,
    use_case: str | None = None,
    priority: Priority | str | None = None,
    max_attempts: int | None = None,
    delay: float | None = None,
    run_at: datetime | None = None,
    delay_tolerance_seconds: float | None = None,
    timeout_seconds: float | None = None,
    idempotency_key: str | None = None,
    webhook_url: str | None = None,
    backoff: Backoff | Mapping[str, Any] | None = None,
    expires_at: datetime | None = None,
    job_id: JobId | None = None,
    max_payload_bytes: int = MAX_PAYLOAD_BYTES,
) -> NewJob:
    """Validate one enqueue request; defaults are filled in by the caller (the registry)."""
    if delay is not None and run_at is not None:
        raise InvalidJobError("give either a delay or run_at, not both", field="run_at")
    checked_payload, payload_json = check_payload(payload, max_payload_bytes)
    job_id = job_id or new_job_id()
    return NewJob(
        id=job_id,
        tenant_id=check_name(DEFAULT_TENANT if tenant_id is None else tenant_id, "tenant_id"),
        use_case=check_name(DEFAULT_USE_CASE if use_case is None else use_case, "use_case"),
        type=check_name(job_type, "type"),
        payload=checked_payload,
        payload_json=payload_json,
        priority=parse_priority(priority),
        max_attempts=_check_int(
            DEFAULT_MAX_ATTEMPTS if max_attempts is None else max_attempts,
            "max_attempts",
            1,
            MAX_ATTEMPTS_LIMIT,
        ),
        delay_seconds=_check_number(delay or 0.0, "delay_seconds", 0.0, MAX_DELAY_SECONDS),
        run_at=_check_run_at(run_at),
        delay_tolerance_seconds=_check_number(
            DEFAULT_DELAY_TOLERANCE_SECONDS
            if delay_tolerance_seconds is None
            else delay_tolerance_seconds,
            "delay_tolerance_seconds",
            0.0,
            MAX_DELAY_SECONDS,
        ),
        timeout_seconds=None
        if timeout_seconds is None
        else _check_number(timeout_seconds, "timeout_seconds", 0.001, MAX_TIMEOUT_SECONDS),
        idempotency_key=_check_key(idempotency_key),
        webhook_url=None if webhook_url is None else _check_url(webhook_url),
        created_at=time_of_id(job_id),
        backoff=_check_backoff(backoff),
        expires_at=_check_expires_at(expires_at, run_at, delay or 0.0),
    )


def build_like(
    first: NewJob,
    payload: Mapping[str, Any] | None,
    idempotency_key: str | None,
    max_payload_bytes: int = MAX_PAYLOAD_BYTES,
) -> NewJob:
    """A job whose request differs from ``first``'s at most in payload and idempotency key:
    those two are validated, every other field is ``first``'s. The jobs of a batch usually
    differ in nothing else, so a batch validates its shared fields once."""
    checked_payload, payload_json = check_payload(payload, max_payload_bytes)
    job_id = new_job_id()
    return NewJob(
        job_id,
        first.tenant_id,
        first.use_case,
        first.type,
        checked_payload,
        payload_json,
        first.priority,
        first.max_attempts,
        first.delay_seconds,
        first.run_at,
        first.delay_tolerance_seconds,
        first.timeout_seconds,
        _check_key(idempotency_key),
        first.webhook_url,
        time_of_id(job_id),
        first.backoff,
        first.expires_at,
        first.max_pending,
    )


def _check_key(idempotency_key: str | None) -> str | None:
    if idempotency_key is None:
        return None
    return check_text(idempotency_key, "idempotency_key", 1, MAX_KEY_LENGTH)


def _check_backoff(backoff: Backoff | Mapping[str, Any] | None) -> Backoff | None:
    if backoff is None or isinstance(backoff, Backoff):
        return backoff
    return Backoff.from_json(backoff)


def parse_priority(value: Priority | str | None) -> Priority:
    if value is None:
        return Priority.MEDIUM
    try:
        return _PRIORITIES[value]  # a Priority is equal to, and hashes as, its name
    except (KeyError, TypeError):
        allowed = ", ".join(p.value for p in Priority)
        raise InvalidJobError(
            f"unknown priority {value!r}; use one of {allowed}", field="priority"
        ) from None


_PRIORITIES = {p.value: p for p in Priority}


def check_name(value: object, field: str) -> str:
    """A job type, tenant or use case: non-empty printable text of bounded length."""
    if type(value) is str and value in _GOOD_NAMES:  # the same few names, job after job
        return value
    text = check_text(value, field, 1, MAX_NAME_LENGTH)
    if not text.isprintable() or text != text.strip():
        raise InvalidJobError(f"{field} must be printable text without surrounding spaces")
    if len(_GOOD_NAMES) >= _GOOD_NAMES_KEPT:
        _GOOD_NAMES.clear()
    _GOOD_NAMES.add(text)
    return text


# Names that passed check_name (a valid name is valid in every field that takes names).
_GOOD_NAMES: set[str] = set()
_GOOD_NAMES_KEPT = 4096


def check_text(value: object, field: str, min_length: int, max_length: int) -> str:
    if not isinstance(value, str):
        raise InvalidJobError(f"{field} must be a string", field=field)
    if not min_length <= len(value) <= max_length:
        raise InvalidJobError(
            f"{field} must be {min_length} to {max_length} characters long", field=field
        )
    _check_storable(value, field)
    return value


@overload
def check_lookup(value: str, field: str) -> str: ...
@overload
def check_lookup(value: str | None, field: str) -> str | None: ...
def check_lookup(value: str | None, field: str) -> str | None:
    """Text a read looks for (a filter, a tenant, an idempotency key): None, or text every
    store can compare. PostgreSQL fails on a NUL or a lone surrogate where SQLite and memory
    find nothing. Any length: longer than a store holds, it finds nothing."""
    return None if value is None else check_text(value, field, 0, sys.maxsize)


def check_filter(where: JobFilter) -> JobFilter:
    """A listing's filter as every store takes it, or ``InvalidJobError`` naming the field:
    text per ``check_lookup``, times with a time zone, in UTC. A naive time was read as local
    time by PostgreSQL and as UTC by SQLite, and the memory store failed on it."""
    return dataclasses.replace(
        where,
        tenant_id=check_lookup(where.tenant_id, "tenant_id"),
        use_case=check_lookup(where.use_case, "use_case"),
        type=check_lookup(where.type, "type"),
        created_after=_check_time(where.created_after, "created_after"),
        created_before=_check_time(where.created_before, "created_before"),
    )


def check_payload(
    payload: Mapping[str, Any] | None, max_bytes: int = MAX_PAYLOAD_BYTES
) -> tuple[JsonObject, str]:
    """The payload must be a JSON object that PostgreSQL can store, within ``max_bytes``.

    Returns the payload and its JSON text, so it is encoded once on the way in.
    """
    if payload is None:
        return {}, "{}"
    if type(payload) is not dict and not isinstance(payload, Mapping):
        raise InvalidJobError("payload must be a JSON object", field="payload")
    text = checked_json(payload, "payload")
    # A character is at most 4 bytes of UTF-8: short text needs no encoding to be measured.
    if len(text) > max_bytes // 4 and len(text.encode()) > max_bytes:
        raise PayloadTooLargeError(
            f"payload is over the limit of {max_bytes} bytes", field="payload"
        )
    return dict(payload), text


def check_json_value(value: object, field: str, depth: int = 0) -> None:
    """Refuse what JSON or PostgreSQL's jsonb cannot hold: NUL characters, NaN, deep nesting.

    Exact type tests come first: this runs for every value of every payload enqueued.
    """
    if depth > MAX_JSON_DEPTH:
        raise InvalidJobError(f"{field} is nested deeper than {MAX_JSON_DEPTH}", field=field)
    kind = type(value)
    if kind is str:
        _check_storable(value, field)  # type: ignore[arg-type]
    elif kind is int or kind is bool or value is None:
        return
    elif kind is float:
        if not math.isfinite(value):  # type: ignore[arg-type]
            raise InvalidJobError(f"{field} holds a number JSON cannot store", field=field)
    elif kind is dict or isinstance(value, Mapping):
        for key, item in value.items():  # type: ignore[attr-defined]
            if type(key) is not str:
                raise InvalidJobError(f"{field} has a key that is not a string", field=field)
            _check_storable(key, field)
            check_json_value(item, field, depth + 1)
    elif kind is list or kind is tuple:
        for item in value:  # type: ignore[attr-defined]
            check_json_value(item, field, depth + 1)
    elif isinstance(value, str | int | float):  # subclasses of the JSON scalars
        check_json_value(kind.__mro__[1](value), field, depth)
    else:
        raise InvalidJobError(f"{field} holds a {kind.__name__}, which is not JSON", field=field)


def checked_json(value: object, field: str) -> str:
    """The JSON text of a payload or a result, once ``check_json_value`` has passed it.

    What passed holds only JSON's own types, finite numbers and storable text, and orjson
    encodes that about ten times faster than the standard library (this runs for every job
    enqueued). The little it refuses (integers beyond 64 bits, a mapping that is not a dict)
    goes to ``json_dumps``; both write compact JSON that decodes to the same value.

    The text written is checked too: the check sees what a subclass of str shows (its
    str(), for a str enum its name), the encoders write what it holds (the enum's value).
    """
    check_json_value(value, field)
    try:
        text = orjson.dumps(value).decode()
    except TypeError:  # orjson.JSONEncodeError is one; lone surrogates are refused so
        text = json_dumps(value)
        _check_storable(text, field)
    if "\\u0000" in text and _NUL_ESCAPE.search(text):
        raise InvalidJobError(f"{field} contains a NUL character", field=field)
    return text


def check_same_request(new: NewJob, held: Job | NewJob) -> None:
    """Raise ``IdempotencyConflictError`` unless ``new``, whose idempotency key its tenant
    already used, asks for what ``held`` (the job holding the key, stored or earlier in the
    same batch) asked for: the same type, use case and payload. Every store calls it before
    its transaction commits, so a batch with a conflict stores nothing.

    Payloads compare as JSON values, numbers by value: PostgreSQL's jsonb gives back 1e23
    as the integer 100000000000000000000000 and -0.0 as 0, which Python compares unequal
    to the floats that were sent."""
    if (new.type, new.use_case) == (held.type, held.use_case) and (
        new.payload == held.payload or _by_value(new.payload) == _by_value(held.payload)
    ):
        return
    raise IdempotencyConflictError(
        f"idempotency key {new.idempotency_key!r} was already used for another request",
        job_id=str(held.id),
    )


def _by_value(payload: JsonObject) -> Any:
    return json.loads(json_dumps(payload), parse_float=decimal.Decimal, parse_int=decimal.Decimal)


def json_dumps(value: Any) -> str:
    """The one JSON encoding of the package: compact, and strict about NaN."""
    return _ENCODER.encode(value)


def result_json(outcome: AttemptOutcome) -> str | None:
    """An outcome's result as JSON text: encoded once by the worker, or here if it was not."""
    if outcome.result_json is not None or outcome.result is None:
        return outcome.result_json
    return json_dumps(outcome.result)


def _mapping_as_dict(value: object) -> object:
    """Any mapping is a JSON object (``check_json_value`` takes them: a payload may be one)."""
    if isinstance(value, Mapping):
        return dict(value)
    raise TypeError(f"Object of type {type(value).__name__} is not JSON serializable")


# A NUL in JSON text (which jsonb refuses): \u0000 after an even number of backslashes (a
# backslash of the text itself is written \\).
_NUL_ESCAPE = re.compile(r"(?<!\\)(?:\\\\)*\\u0000")

# One encoder for the package: json.dumps with non-default options builds a new one per call.
_ENCODER = json.JSONEncoder(
    separators=(",", ":"), allow_nan=False, ensure_ascii=False, default=_mapping_as_dict
)


def storable_text(text: str) -> str:
    """Text from handler code (an error, a progress message) as the stores can keep it.

    NUL characters are dropped: PostgreSQL's text and jsonb refuse them. A lone surrogate,
    which is what ``surrogateescape`` makes of a byte that is not UTF-8 (a file name read
    with ``os.listdir``, say), cannot be encoded as UTF-8 at all; it is written as its
    escape, ``\\udcff``: unlike "replace" (a "?" for each), that keeps which byte it was.
    """
    if "\x00" in text:
        text = text.replace("\x00", "")
    if text.isascii():
        return text
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return text.encode("utf-8", "backslashreplace").decode("utf-8")
    return text


def _check_storable(text: str, field: str) -> None:
    if "\x00" in text:
        raise InvalidJobError(f"{field} contains a NUL character", field=field)
    if text.isascii():
        return
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise InvalidJobError(f"{field} is not valid Unicode text", field=field) from None


def _check_int(value: object, field: str, low: int, high: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidJobError(f"{field} must be an integer", field=field)
    if not low <= value <= high:
        raise InvalidJobError(f"{field} must be between {low} and {high}", field=field)
    return value


def _check_number(value: object, field: str, low: float, high: float) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise InvalidJobError(f"{field} must be a number", field=field)
    number = float(value)
    if not math.isfinite(number) or not low <= number <= high:
        raise InvalidJobError(f"{field} must be between {low:.15g} and {high:.15g}", field=field)
    return number


def _check_time(value: datetime | None, field: str) -> datetime | None:
    if value is None:
        return None
    if not isinstance(value, datetime):
        raise InvalidJobError(f"{field} must be a datetime", field=field)
    if value.tzinfo is None:
        raise InvalidJobError(f"{field} must carry a timezone", field=field)
    try:
        return value.astimezone(UTC)
    except OverflowError:  # e.g. 0001-01-01T00:00+14:00, before year 1 in UTC
        raise InvalidJobError(f"{field} is out of range", field=field) from None


def _check_run_at(value: datetime | None) -> datetime | None:
    """At most ``MAX_DELAY_SECONDS`` ahead, like a delay. At most ``MAX_RUN_AT_AGE_SECONDS``
    ago: a past run_at makes the job due at once, but its deadline, its place in the claim
    order (earliest deadline first) and the queue-wait statistics all count from it, so a
    run_at from another century is a mistake, not a schedule."""
    checked = _check_time(value, "run_at")
    if checked is None:
        return None
    now = datetime.now(UTC)
    if checked > now + timedelta(seconds=MAX_DELAY_SECONDS):
        raise InvalidJobError(
            f"run_at must be at most {MAX_DELAY_SECONDS / 86400:.0f} days ahead", field="run_at"
        )
    if checked < now - timedelta(seconds=MAX_RUN_AT_AGE_SECONDS):
        raise InvalidJobError(
            f"run_at must be at most {MAX_RUN_AT_AGE_SECONDS / 3600:.0f} hours in the past "
            "(leave it out to run the job now)",
            field="run_at",
        )
    return checked


def _check_expires_at(
    expires_at: datetime | None, run_at: datetime | None, delay: float
) -> datetime | None:
    """Later than now and than when the job is due (run_at, or now plus the delay), and before
    ``LATEST_EXPIRY``: PostgreSQL's driver writes the largest time as infinity, which reads
    back without its time zone."""
    checked = _check_time(expires_at, "expires_at")
    if checked is None:
        return None
    now = datetime.now(UTC)
    if checked <= max(_check_time(run_at, "run_at") or now + seconds(delay), now):
        raise InvalidJobError(
            "expires_at must be later than now and than when the job is due (run_at, or now"
            " plus its delay)",
            field="expires_at",
        )
    if checked >= LATEST_EXPIRY:
        raise InvalidJobError(
            "expires_at must be before 9999-12-31 (leave it out for a job that never expires)",
            field="expires_at",
        )
    return checked


def _check_url(url: object) -> str:
    text = check_text(url, "webhook_url", 1, 2048)
    if not text.startswith(("http://", "https://")):
        raise InvalidJobError("webhook_url must be an http or https URL", field="webhook_url")
    return text
