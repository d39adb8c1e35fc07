"""``create_jobs_router``: the jobs API as a FastAPI router an app mounts under any prefix.

Handlers only translate HTTP to ``JobApp`` calls and back; errors become JSON through the
handlers installed by ``install_error_handlers``.
"""

from __future__ import annotations

import dataclasses
from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query
from fastapi.responses import JSONResponse

from async_jobs.api.auth import Principal, TokenAuth, principal_of, route_class
from async_jobs.api.schemas import (
    CleanupRequest,
    JobBatchCreate,
    JobCreate,
    decode_cursor,
    encode_cursor,
)
from async_jobs.app import MAX_PAGE_SIZE, EnqueueRequest, JobApp
from async_jobs.domain.errors import AsyncJobsError
from async_jobs.domain.jobs import JobFilter, JobState

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


def create_jobs_router(jobs: JobApp, auth: TokenAuth | None = None) -> APIRouter:
    """Routes ``POST /jobs``, ``POST /jobs/batch``, ``GET /jobs``, ``GET /jobs/{id}``,
    ``POST /jobs/{id}/cancel``, ``POST /jobs/{id}/retry``, ``GET /use-cases``,
    ``POST /use-cases/{name}/pause|resume``, ``GET /stats``, ``POST /maintenance/cleanup``
    and ``GET /health``.

    ``auth`` (``TokenAuth.from_settings(settings)``): every route but ``/health`` needs a
    bearer token; a tenant's token acts within its tenant only (its jobs, lists and stats; a
    foreign job id is a 404), administration needs an admin token. None: open to anyone."""
    router = APIRouter(route_class=route_class(auth))

    @router.post("/jobs", status_code=201, summary="Enqueue a job")
    async def enqueue(body: JobCreate, caller: Caller, wait: Wait = None) -> JSONResponse:
        job, created = await jobs.enqueue_checked(_as_caller(body.to_request(), caller))
        if wait is not None:
            return await _waited(jobs, job.id, wait, caller)
        return JSONResponse(job.to_json(), status_code=201 if created else 200)

    @router.post("/jobs/batch", status_code=201, summary="Enqueue many jobs, all or none")
    async def enqueue_batch(body: JobBatchCreate, caller: Caller) -> JSONResponse:
        requests = [_as_caller(item.to_request(), caller) for item in body.jobs]
        stored = await jobs.enqueue_many_checked(requests)
        created = [was_created for _, was_created in stored]
        answer = {"items": [job.to_json() for job, _ in stored], "created": created}
        return JSONResponse(answer, status_code=201 if any(created) else 200)

    @router.post("/jobs/{job_id}/cancel", summary="Cancel a job")
    async def cancel(job_id: str, caller: Caller) -> JSONResponse:
        job = await jobs.cancel(job_id, caller.tenant_id)
        return JSONResponse(job.to_json())

    @router.post("/jobs/{job_id}/retry", summary="Run a failed or cancelled job again")
    async def retry(job_id: str, caller: Caller) -> JSONResponse:
        job = await jobs.retry(job_id, caller.tenant_id)
        return JSONResponse(job.to_json())

    @router.get("/jobs/{job_id}", summary="One job")
    async def get_job(job_id: str, caller: Caller, wait: Wait = None) -> JSONResponse:
        if wait is not None:
            return await _waited(jobs, job_id, wait, caller)
        job = await jobs.get_job(job_id, caller.tenant_id)
        return JSONResponse(job.to_json())

    @router.get("/jobs", summary="List jobs, newest first")
    async def list_jobs(
        status: JobState | None = None,
        use_case: str | None = None,
        type: str | None = None,
        tenant_id: str | None = None,
        created_after: datetime | None = None,
        created_before: datetime | None = None,
        limit: Annotated[int, Query(ge=1, le=MAX_PAGE_SIZE)] = 100,
        cursor: str | None = None,
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
        )
        page = await jobs.list_jobs(where, limit, decode_cursor(cursor))
        body: dict[str, Any] = {
            "items": [job.to_json() for job in page.items],
            "next_cursor": encode_cursor(page.next_cursor),
        }
        return JSONResponse(body)

    _add_admin_routes(router, jobs)

    @router.get("/health", summary="Is the store reachable")
    async def health() -> JSONResponse:
        try:
            await jobs.store.ping()
        except AsyncJobsError as exc:
            body = {"status": "unavailable", "store": exc.message}
            return JSONResponse(body, status_code=503, headers={"Retry-After": "5"})
        return JSONResponse({"status": "ok", "store": "ok"})

    return router


def _add_admin_routes(router: APIRouter, jobs: JobApp) -> None:
    """Use cases, statistics and maintenance."""

    @router.get("/use-cases", summary="Use cases and whether they are paused")
    async def use_cases(caller: Caller) -> JSONResponse:
        caller.require_admin()
        return JSONResponse({"items": [u.to_json() for u in await jobs.use_cases()]})

    @router.post("/use-cases/{name}/pause", summary="Stop starting jobs of a use case")
    async def pause(name: str, caller: Caller) -> JSONResponse:
        caller.require_admin()
        return JSONResponse((await jobs.pause(name)).to_json())

    @router.post("/use-cases/{name}/resume", summary="Start jobs of a paused use case again")
    async def resume(name: str, caller: Caller) -> JSONResponse:
        caller.require_admin()
        return JSONResponse((await jobs.resume(name)).to_json())

    @router.get("/stats", summary="Counts, throughput, latencies, deadline misses")
    async def stats(caller: Caller, tenant_id: str | None = None) -> JSONResponse:
        return JSONResponse((await jobs.stats(caller.tenant_for(tenant_id))).to_json())

    @router.post("/maintenance/cleanup", summary="Delete terminal jobs older than an age")
    async def cleanup(body: CleanupRequest, caller: Caller) -> JSONResponse:
        caller.require_admin()
        seconds = None if body.older_than_hours is None else body.older_than_hours * 3600
        deleted = await jobs.cleanup(seconds)
        return JSONResponse({"deleted": sum(deleted.values()), "by_status": deleted})


async def _waited(jobs: JobApp, job_id: Any, seconds: float, caller: Principal) -> JSONResponse:
    """200 with the job once it has ended, 202 with it as it stands after ``seconds``."""
    job = await jobs.wait_for(job_id, seconds, caller.tenant_id)
    return JSONResponse(job.to_json(), status_code=200 if job.status.is_terminal else 202)


def _as_caller(request: EnqueueRequest, caller: Principal) -> EnqueueRequest:
    """A tenant token enqueues into its own tenant (naming another one is a 403)."""
    tenant = caller.tenant_for(request.tenant_id)
    return (
        request if tenant == request.tenant_id else dataclasses.replace(request, tenant_id=tenant)
    )
