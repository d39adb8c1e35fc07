"""Every error leaves the API as ``{"error": {"code", "message"}}`` with its status; no
traceback ever reaches a client."""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException

from async_jobs.domain.errors import AsyncJobsError, AuthTokenError, QuotaExceededError, StoreError

log = logging.getLogger("async_jobs.api")

RETRY_AFTER_SECONDS = "5"


def error_response(
    status: int, code: str, message: str, headers: dict[str, str] | None = None, **details: Any
) -> JSONResponse:
    body: dict[str, Any] = {"code": code, "message": message}
    if details:
        body["details"] = details
    return JSONResponse({"error": body}, status_code=status, headers=headers)


async def on_our_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, AsyncJobsError)
    headers = None
    if isinstance(exc, StoreError):
        log.warning("%s %s: %s", request.method, request.url.path, exc)
        headers = {"Retry-After": RETRY_AFTER_SECONDS}
        if exc.http_status == 500:
            return error_response(503, exc.code, "the job store failed; try again", headers)
    elif isinstance(exc, QuotaExceededError):
        headers = {"Retry-After": str(max(1, round(exc.retry_after_seconds)))}
    elif isinstance(exc, AuthTokenError) and exc.http_status == 401:
        headers = {"WWW-Authenticate": "Bearer"}
    return JSONResponse(exc.to_json(), status_code=exc.http_status, headers=headers)


async def on_invalid_request(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    problems = [_problem(e) for e in exc.errors()]
    if any(p["type"] == "json_invalid" for p in problems):
        return error_response(400, "malformed_json", "the request body is not valid JSON")
    if _body_not_json(request, exc):
        return error_response(
            415,
            "unsupported_media_type",
            "the request body must be JSON, sent with Content-Type: application/json",
        )
    first = problems[0] if problems else {"field": "", "message": "invalid request"}
    message = f"{first['field']}: {first['message']}" if first["field"] else first["message"]
    return error_response(422, "invalid_request", message, problems=problems)


async def on_http_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, HTTPException)
    if exc.status_code == 400 and isinstance(exc.__cause__, ValueError | RecursionError):
        # FastAPI's answer to a body its JSON reader gave up on, other than for its syntax:
        # not UTF-8, an integer of more than 4,300 digits, nesting deeper than it goes.
        return error_response(
            400,
            "malformed_json",
            "the request body cannot be read as JSON (not UTF-8, an integer of more than 4300 "
            "digits, or nested too deep)",
        )
    code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
    headers = dict(exc.headers) if exc.headers else None
    return error_response(exc.status_code, code, str(exc.detail), headers)


async def _on_unexpected(request: Request, exc: Exception) -> JSONResponse:
    log.exception("unexpected error on %s %s", request.method, request.url.path)
    return error_response(500, "internal_error", "an unexpected error occurred")


def _body_not_json(request: Request, exc: RequestValidationError) -> bool:
    """A body was sent, but not as JSON (FastAPI then reads it as bytes, which no body model
    accepts): checked only once a request has failed, so a good one pays nothing for it."""
    kind = request.headers.get("content-type", "").partition(";")[0].strip().lower()
    if kind == "application/json" or (kind.startswith("application/") and kind.endswith("+json")):
        return False
    return any(e.get("loc") == ("body",) and e.get("type") != "missing" for e in exc.errors())


def _problem(error: Any) -> dict[str, str]:
    location = [str(part) for part in error.get("loc", ()) if part != "body"]
    return {
        "field": ".".join(location),
        "message": str(error.get("msg", "invalid")),
        "type": str(error.get("type", "")),
    }


def install_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(AsyncJobsError, on_our_error)
    app.add_exception_handler(RequestValidationError, on_invalid_request)
    app.add_exception_handler(HTTPException, on_http_error)
    app.add_exception_handler(Exception, _on_unexpected)
