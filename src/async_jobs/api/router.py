"""``create_jobs_router``: the jobs API as a FastAPI router an app mounts under any prefix.

Handlers only translate HTTP to ``JobApp`` calls and back; errors become JSON through the
handlers installed by ``install_error_handlers``.

Each route answers JSON the domain prepared (``Job.to_json()``...), so nothing is validated
twice on the way out; its ``responses`` declare, for the OpenAPI document, every status it
can answer with the model of its body (``api.schemas``).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Request, Response
from fastapi.responses import JSONResponse
from fastapi.routing import APIRoute
from pydantic import BaseModel, ValidationError
from starlette.types import Scope

from async_jobs.api.auth import Handler, Principal, TokenAuth, principal_of, route_class
from async_jobs.api.schemas import (
    NO_NUL,
    CleanupRequest,
    CleanupResponse,
    ErrorResponse,
    HealthResponse,
    JobBatchCreate,
    JobBatchResponse,
    JobCreate,
    JobPageResponse,
    JobResponse,
    StatsResponse,
    UseCaseListResponse,
    UseCaseResponse,
    UtcTime,
    decode_cursor,
    encode_cursor,
)
from async_jobs.app import JobApp
from async_jobs.domain.errors import AsyncJobsError, ConfigurationError
from async_jobs.domain.jobs import Job, JobFilter, JobState, Priority
from async_jobs.domain.requests import MAX_PAGE_SIZE, EnqueueRequest
from async_jobs.domain.validation import json_dumps

Caller = Annotated[Principal, Depends(principal_of)]
MAX_WAIT_SECONDS = 60.0
Wait = Annotated[
    float | None,
    Query(
        ge=0,
        le=MAX_WAIT_SECONDS,
        description="Wait up to this many seconds for the job to end: 200 with the ended "
        "job, or 202 with the job as it stands when the time is up.",
    ),
]
TextFilter = Annotated[str | None, Query(pattern=NO_NUL)]
STATS_COUNTS = (
    "false: leave out the counts by use case, tenant and state (an empty list), the one part "
    "whose cost grows with every job the store holds (a scan of all of them); "
    "the rest reads the jobs of the last hour and the waiting ones only."
)

Responses = dict[int | str, dict[str, Any]]

_RETRY_AFTER = {"Retry-After": {"description": "Seconds to wait.", "schema": {"type": "integer"}}}
_ERRORS: Mapping[int, tuple[str, dict[str, Any]]] = {
    400: ("The body is not valid JSON.", {}),
    401: (
        "No valid bearer token.",
        {"WWW-Authenticate": {"description": "Bearer", "schema": {"type": "string"}}},
    ),
    403: ("The token acts for another tenant, or this needs an admin token.", {}),
    404: ("No such job (another tenant's job is one too).", {}),
    409: ("The request conflicts with the job's state.", {}),
    413: ("The body is over the size limit.", {}),
    415: ("The body is not sent as JSON (Content-Type: application/json).", {}),
    422: ("A field or parameter is invalid.", {}),
    429: ("A tenant quota refuses the job now (quota_exceeded).", _RETRY_AFTER),
    503: ("The job store cannot be reached or is not migrated.", _RETRY_AFTER),
}

_UNEXPECTED = "Any other error, e.g. 500 internal_error (a bug: never on purpose)."


def _answers(
    auth: TokenAuth | None,
    ok: Mapping[int, tuple[type[BaseModel], str]],
    errors: Mapping[int, str | None],
) -> Responses:
    """``responses=`` of a route: its successes (status -> model, description), and its errors
    (status -> description, None: the usual one), each with the error body, which ``default``
    declares for any other status too (a 500 ``internal_error``: a bug). 401 and 403 are
    declared only when ``auth`` is set: without tokens no route answers them."""
    declared: Responses = {
        status: {"model": model, "description": said} for status, (model, said) in ok.items()
    }
    if auth is not None:
        errors = {401: None, **errors}
    for status, said in sorted(errors.items()):
        if status == 403 and auth is None:
            continue
        usual, headers = _ERRORS[status]
        declared[status] = {"model": ErrorResponse, "description": said or usual}
        if headers:
            declared[status]["headers"] = headers
    declared["default"] = {"model": ErrorResponse, "description": _UNEXPECTED}
    return declared


_WAITED = {
    202: (JobResponse, "With ?wait: the job as it stands when the time is up."),
}
_BAD_JOB = (
    "A field is invalid (invalid_request, invalid_job), or no handler is registered for the "
    "type (unknown_job_type)."
)
_ENQUEUE_ERRORS: Mapping[int, str | None] = {
    400: None,
    403: "The body names a tenant the token does not act for.",
    409: "The idempotency key was used for another request (idempotency_conflict).",
    413: "The body is over the size limit (request_too_large), or a payload over the "
    "payload limit (payload_too_large).",
    415: None,
    422: _BAD_JOB,
    429: None,
    503: None,
}


def create_jobs_router(jobs: JobApp, auth: TokenAuth | None = None) -> APIRouter:
    """Routes ``POST /jobs``, ``POST /jobs/batch``, ``GET /jobs``, ``GET /jobs/{id}``,
    ``POST /jobs/{id}/cancel``, ``POST /jobs/{id}/retry``, ``GET /use-cases``,
    ``POST /use-cases/{name}/pause|resume``, ``GET /stats``, ``POST /maintenance/cleanup``
    and ``GET /health``.

    ``auth`` (``TokenAuth.from_settings(settings)``): every route but ``/health`` needs a
    bearer token; a tenant's token acts within its tenant only (its jobs, lists and stats; a
    foreign job id is a 404), administration needs an admin token. None: open to anyone.
    ``DELETE /jobs/{id}`` cancels too. Anything else than a ``JobApp`` and a ``TokenAuth``
    (or None) is refused here, not at the first request."""
    _check_router_arguments(jobs, auth)
    jobs_route = route_class(auth)
    router = APIRouter(route_class=jobs_route)

    async def enqueue(body: JobCreate, caller: Caller, wait: Wait = None) -> Response:
        job, created = await jobs.enqueue_checked(_as_caller(body.to_request(), caller))
        if wait is not None:
            return await _waited(jobs, job.id, wait, caller)
        return _enqueued(job, created)

    router.add_api_route(
        "/jobs",
        enqueue,
        methods=["POST"],
        status_code=201,
        summary="Enqueue a job",
        response_model=None,
        responses=_answers(
            auth,
            {
                201: (JobResponse, "The job, stored."),
                200: (
                    JobResponse,
                    "The existing job for a repeated idempotency key; with ?wait, the job "
                    "once it has ended.",
                ),
                **_WAITED,
            },
            _ENQUEUE_ERRORS,
        ),
        route_class_override=_enqueue_route(jobs_route, jobs),
    )

    @router.post(
        "/jobs/batch",
        status_code=201,
        summary="Enqueue many jobs, all or none",
        response_model=None,
        responses=_answers(
            auth,
            {
                201: (JobBatchResponse, "The jobs, stored (some may have existed already)."),
                200: (JobBatchResponse, "Every job existed already (idempotency keys)."),
            },
            {**_ENQUEUE_ERRORS, 422: _BAD_JOB + " Nothing is stored."},
        ),
    )
    async def enqueue_batch(body: JobBatchCreate, caller: Caller) -> JSONResponse:
        requests = [_as_caller(item.to_request(), caller) for item in body.jobs]
        stored = await jobs.enqueue_many_checked(requests)
        created = [was_created for _, was_created in stored]
        answer = {"items": [job.to_json() for job, _ in stored], "created": created}
        return JSONResponse(answer, status_code=201 if any(created) else 200)

    cancel_answers = _answers(
        auth,
        {200: (JobResponse, "The job: cancelled, or flagged while it runs.")},
        {404: None, 409: "The job has already ended (invalid_transition).", 503: None},
    )

    @router.post(
        "/jobs/{job_id}/cancel",
        summary="Cancel a job",
        response_model=None,
        responses=cancel_answers,
    )
    async def cancel(job_id: str, caller: Caller) -> JSONResponse:
        caller.require_write()
        job = await jobs.cancel(job_id, caller.tenant_id)
        return JSONResponse(job.to_json())

    router.add_api_route(
        "/jobs/{job_id}",
        cancel,
        methods=["DELETE"],
        summary="Cancel a job (as POST /jobs/{job_id}/cancel)",
        operation_id="delete_job",
        response_model=None,
        responses=cancel_answers,
    )

    @router.post(
        "/jobs/{job_id}/retry",
        summary="Run a failed or cancelled job again",
        response_model=None,
        responses=_answers(
            auth,
            {200: (JobResponse, "The job, pending again.")},
            {404: None, 409: "The job is not failed or cancelled (invalid_transition).", 503: None},
        ),
    )
    async def retry(job_id: str, caller: Caller) -> JSONResponse:
        caller.require_write()
        job = await jobs.retry(job_id, caller.tenant_id)
        return JSONResponse(job.to_json())

    @router.get(
        "/jobs/{job_id}",
        summary="One job",
        response_model=None,
        responses=_answers(
            auth,
            {200: (JobResponse, "The job (with ?wait: once it has ended)."), **_WAITED},
            {404: None, 422: "?wait is out of bounds.", 503: None},
        ),
    )
    async def get_job(job_id: str, caller: Caller, wait: Wait = None) -> JSONResponse:
        if wait is not None:
            return await _waited(jobs, job_id, wait, caller)
        job = await jobs.get_job(job_id, caller.tenant_id)
        return JSONResponse(job.to_json())

    @router.get(
        "/jobs",
        summary="List jobs, newest first",
        response_model=None,
        responses=_answers(
            auth,
            {200: (JobPageResponse, "A page of jobs.")},
            {
                400: "The cursor is not one this API gave out (invalid_cursor).",
                403: "tenant_id names a tenant the token does not act for.",
                422: "A filter is invalid: an unknown status or priority, a time without a "
                "time zone, a limit out of bounds, a NUL character.",
                503: None,
            },
        ),
    )
    async def list_jobs(
        status: JobState | None = None,
        use_case: TextFilter = None,
        type: TextFilter = None,
        tenant_id: TextFilter = None,
        created_after: UtcTime | None = None,
        created_before: UtcTime | None = None,
        limit: Annotated[int, Query(ge=1, le=MAX_PAGE_SIZE)] = 100,
        cursor: str | None = None,
        priority: Priority | None = None,
        *,
        caller: Caller,
    ) -> JSONResponse:
        # A tenant's listing is always filtered by its tenant, so a cursor (a position, not a
        # permission) leads nowhere else whatever it says.
        where = JobFilter(
            tenant_id=caller.tenant_for(tenant_id),
            status=status,
            use_case=use_case,
            type=type,
            created_after=created_after,
            created_before=created_before,
            priority=priority,
        )
        page = await jobs.list_jobs(where, limit, decode_cursor(cursor))
        body: dict[str, Any] = {
            "items": [job.to_json() for job in page.items],
            "next_cursor": encode_cursor(page.next_cursor),
        }
        return JSONResponse(body)

    _add_admin_routes(router, jobs, auth)

    @router.get(
        "/health",
        summary="Is the store (and the broker of the transport) reachable",
        response_model=None,
        responses={
            200: {"model": HealthResponse, "description": "The store answers."},
            503: {
                "model": HealthResponse,
                "description": "The store, or the broker, cannot be reached.",
                "headers": _RETRY_AFTER,
            },
            "default": {"model": ErrorResponse, "description": _UNEXPECTED},
        },
    )
    async def health() -> JSONResponse:
        try:
            await jobs.store.ping()
        except AsyncJobsError as exc:
            body = {"status": "unavailable", "store": exc.message}
            return JSONResponse(body, status_code=503, headers={"Retry-After": "5"})
        try:
            broker = await jobs.check_broker()
        except AsyncJobsError as exc:  # the transport's broker (Redis) does not answer
            body = {"status": "unavailable", "store": "ok", "broker": exc.message}
            return JSONResponse(body, status_code=503, headers={"Retry-After": "5"})
        answer = {"status": "ok", "store": "ok"}
        if broker is not None:
            answer["broker"] = "ok"
        return JSONResponse(answer)

    return router


def _add_admin_routes(router: APIRouter, jobs: JobApp, auth: TokenAuth | None) -> None:
    """Use cases, statistics and maintenance."""
    admin = "This needs an admin token."
    named = _answers(
        auth,
        {200: (UseCaseResponse, "The use case as it is now.")},
        {403: admin, 422: "The name is not a valid use case name.", 503: None},
    )

    @router.get(
        "/use-cases",
        summary="Use cases and whether they are paused",
        response_model=None,
        responses=_answers(
            auth, {200: (UseCaseListResponse, "Every use case.")}, {403: admin, 503: None}
        ),
    )
    async def use_cases(caller: Caller) -> JSONResponse:
        caller.require_admin()
        return JSONResponse({"items": [u.to_json() for u in await jobs.use_cases()]})

    @router.post(
        "/use-cases/{name}/pause",
        summary="Stop starting jobs of a use case",
        response_model=None,
        responses=named,
    )
    async def pause(name: str, caller: Caller) -> JSONResponse:
        caller.require_admin()
        caller.require_write()
        return JSONResponse((await jobs.pause(name)).to_json())

    @router.post(
        "/use-cases/{name}/resume",
        summary="Start jobs of a paused use case again",
        response_model=None,
        responses=named,
    )
    async def resume(name: str, caller: Caller) -> JSONResponse:
        caller.require_admin()
        caller.require_write()
        return JSONResponse((await jobs.resume(name)).to_json())

    @router.get(
        "/stats",
        summary="Counts, throughput, latencies, deadline misses",
        response_model=None,
        responses=_answers(
            auth,
            {200: (StatsResponse, "Statistics, of one tenant or of all.")},
            {
                403: "tenant_id names a tenant the token does not act for.",
                422: "tenant_id holds a NUL character, or counts is not a boolean.",
                503: None,
            },
        ),
    )
    async def stats(
        caller: Caller,
        tenant_id: TextFilter = None,
        counts: Annotated[bool, Query(description=STATS_COUNTS)] = True,
    ) -> JSONResponse:
        stats = await jobs.stats(caller.tenant_for(tenant_id), with_counts=counts)
        return JSONResponse(stats.to_json())

    @router.post(
        "/maintenance/cleanup",
        summary="Delete terminal jobs older than an age",
        response_model=None,
        responses=_answers(
            auth,
            {200: (CleanupResponse, "How many jobs were deleted, by state.")},
            {400: None, 403: admin, 413: None, 415: None, 422: None, 503: None},
        ),
    )
    async def cleanup(body: CleanupRequest, caller: Caller) -> JSONResponse:
        caller.require_admin()
        caller.require_write()
        seconds = None if body.older_than_hours is None else body.older_than_hours * 3600
        deleted = await jobs.cleanup(seconds)
        return JSONResponse({"deleted": sum(deleted.values()), "by_status": deleted})


async def _waited(jobs: JobApp, job_id: Any, seconds: float, caller: Principal) -> JSONResponse:
    """200 with the job once it has ended, 202 with it as it stands after ``seconds``."""
    job = await jobs.wait_for(job_id, seconds, caller.tenant_id)
    return JSONResponse(job.to_json(), status_code=200 if job.status.is_terminal else 202)


def _enqueue_route(base: type[APIRoute], jobs: JobApp) -> type[APIRoute]:
    """``POST /jobs`` is the route under load. A well-formed JSON body without query
    parameters is validated by pydantic in one pass over its bytes and enqueued, without
    FastAPI's parameter resolution; any other request (``?wait``, another content type, a
    body that does not validate) goes FastAPI's way, which answers it, errors included,
    exactly as it answers every route."""

    class EnqueueRoute(base):  # type: ignore[valid-type,misc]
        async def respond(self, request: Request, general: Handler) -> Response:
            if request.scope["query_string"] or not _sent_as_json(request.scope):
                return await general(request)
            try:
                body = JobCreate.model_validate_json(await request.body())
            except ValidationError:
                return await general(request)
            caller = await principal_of(request)
            job, created = await jobs.enqueue_checked(_as_caller(body.to_request(), caller))
            return _enqueued(job, created)

    return EnqueueRoute


def _enqueued(job: Job, created: bool) -> Response:
    """201 with the stored job, or 200 with the job that already held the idempotency key."""
    return Response(
        json_dumps(job.to_json()).encode(),
        status_code=201 if created else 200,
        media_type="application/json",
    )


def _sent_as_json(scope: Scope) -> bool:
    """Whether the request says its body is JSON in the usual words (no parameters)."""
    for name, value in scope["headers"]:
        if name == b"content-type":
            return bool(value == b"application/json")
    return False


def _as_caller(request: EnqueueRequest, caller: Principal) -> EnqueueRequest:
    """A tenant token enqueues into its own tenant (naming another one is a 403); a
    read-only token enqueues nothing (403)."""
    caller.require_write()
    tenant = caller.tenant_for(request.tenant_id)
    return (
        request if tenant == request.tenant_id else dataclasses.replace(request, tenant_id=tenant)
    )


def _check_router_arguments(jobs: object, auth: object) -> None:
    if not isinstance(jobs, JobApp):
        raise ConfigurationError(
            f"create_jobs_router(jobs, auth) takes a JobApp as jobs (the app whose handlers "
            f"and store the routes use, e.g. JobApp() or JobApp(settings=...)), not "
            f"{type(jobs).__name__} {jobs!r:.60}; a factory must be called first"
        )
    if auth is not None and not isinstance(auth, TokenAuth):
        raise ConfigurationError(
            "create_jobs_router(jobs, auth) takes a TokenAuth as auth, e.g. "
            "TokenAuth.from_settings(jobs.settings) or TokenAuth({'<token>': '*'}), or None "
            f"for an open API; not {type(auth).__name__}"
        )
