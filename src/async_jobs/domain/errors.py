"""Every error this package raises on purpose derives from ``AsyncJobsError``.

Each error has a stable ``code`` (the ``error.code`` of HTTP answers) and an HTTP status, so
the API and the CLI turn any of them into a clear answer without a table of their own::

    AsyncJobsError
    ├── ConfigurationError            bad settings, DSN that does not parse      (500 / exit 2)
    ├── InvalidJobError               a job request that cannot be stored        (422)
    │   ├── UnknownJobTypeError       no handler is registered for the type      (422)
    │   └── PayloadTooLargeError      payload over the size limit                (413)
    ├── InvalidCursorError            a page cursor that was not ours            (400)
    ├── JobNotFoundError              no such job (or another tenant's)          (404)
    ├── IdempotencyConflictError      same key, different request                (409)
    ├── InvalidTransitionError        e.g. retrying a job that has not failed    (409)
    ├── HandlerRegistrationError      a handler that cannot be registered
    └── StoreError                    the store failed
        ├── StoreUnavailableError     cannot reach the store (retry later)       (503)
        ├── SchemaMissingError        the store has not been migrated            (503)
        └── StoreRefusedError         a value or row the store will never take

Driver errors are wrapped once, at the store adapter, with ``raise ... from exc``.
"""

from __future__ import annotations

from typing import Any


class AsyncJobsError(Exception):
    """Base of every error of this package."""

    code = "internal_error"
    http_status = 500

    def __init__(self, message: str, **details: Any) -> None:
        super().__init__(message)
        self.message = message
        self.details = details

    def to_json(self) -> dict[str, Any]:
        body: dict[str, Any] = {"code": self.code, "message": self.message}
        if self.details:
            body["details"] = self.details
        return {"error": body}


class ConfigurationError(AsyncJobsError):
    code = "configuration_error"


class InvalidJobError(AsyncJobsError):
    code = "invalid_job"
    http_status = 422


class UnknownJobTypeError(InvalidJobError):
    code = "unknown_job_type"


class PayloadTooLargeError(InvalidJobError):
    code = "payload_too_large"
    http_status = 413


class InvalidCursorError(AsyncJobsError):
    code = "invalid_cursor"
    http_status = 400


class JobNotFoundError(AsyncJobsError):
    code = "job_not_found"
    http_status = 404


class IdempotencyConflictError(AsyncJobsError):
    code = "idempotency_conflict"
    http_status = 409


class InvalidTransitionError(AsyncJobsError):
    code = "invalid_transition"
    http_status = 409


class QuotaExceededError(AsyncJobsError):
    """A tenant's quota refuses the request now; it may succeed after ``retry_after_seconds``."""

    code = "quota_exceeded"
    http_status = 429

    def __init__(self, message: str, *, retry_after_seconds: float = 1.0, **details: Any) -> None:
        super().__init__(message, retry_after_seconds=retry_after_seconds, **details)
        self.retry_after_seconds = retry_after_seconds


class AuthTokenError(AsyncJobsError):
    """A request without a valid token (HTTP 401), or a token that may not do this (403)."""

    code = "unauthorized"
    http_status = 401


class ForbiddenError(AuthTokenError):
    code = "forbidden"
    http_status = 403


class RemoteHttpError(AsyncJobsError):
    """The server answered with an error the client has no more specific type for."""

    code = "remote_http_error"
    http_status = 502

    def __init__(self, message: str, *, status_code: int, **details: Any) -> None:
        super().__init__(message, status_code=status_code, **details)
        self.status_code = status_code


class HandlerRegistrationError(AsyncJobsError):
    code = "handler_registration_error"


class StoreError(AsyncJobsError):
    code = "store_error"


class StoreRefusedError(StoreError):
    """The store refused what it was given (a value it cannot hold, a broken constraint):
    written again as it is, it fails again. Any other ``StoreError`` may pass, so a write
    that gets one is tried again later."""


class StoreUnavailableError(StoreError):
    code = "store_unavailable"
    http_status = 503


class SchemaMissingError(StoreError):
    code = "schema_missing"
    http_status = 503
