"""The standalone HTTP app (``async-jobs api`` and ``async-jobs serve``), built from the same
router an application can mount itself."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
from collections.abc import AsyncIterator
from typing import Any, Protocol

from fastapi import FastAPI
from fastapi.middleware.cors import CORSMiddleware

from async_jobs.api.auth import TokenAuth, TokenAuthMiddleware
from async_jobs.api.dashboard import create_dashboard_router
from async_jobs.api.errors import install_error_handlers
from async_jobs.api.limits import DEFAULT_MAX_BODY_BYTES, BodySizeLimit
from async_jobs.api.ops import TraceContextMiddleware, create_ops_router
from async_jobs.api.router import create_jobs_router
from async_jobs.app import JobApp
from async_jobs.core.scheduler import SchedulerConfig
from async_jobs.core.worker import WorkerConfig

log = logging.getLogger("async_jobs.api")
DASHBOARD_PATH = "/dashboard"


def create_api(
    jobs: JobApp,
    *,
    worker: WorkerConfig | None = None,
    scheduler: SchedulerConfig | None = None,
    migrate: bool = False,
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
) -> FastAPI:
    """The API app. With ``worker`` and ``scheduler``, a worker and a scheduler run in the
    same process (``serve``); with ``migrate``, the schema is created or upgraded at
    start-up."""

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await jobs.open()
        # What start-up built (the app, its routes and models, the pool) lives as long as
        # the process: out of the collector's sight, so that its full collections, which
        # otherwise walk all of it every few thousand requests, stay short.
        gc.freeze()
        try:
            if migrate:
                await jobs.migrate()
            async with (
                _running(
                    app, "scheduler", None if scheduler is None else jobs.scheduler(scheduler)
                ),
                _running(app, "worker", None if worker is None else jobs.worker(worker)),
            ):
                yield
        finally:
            await jobs.close()

    auth = TokenAuth.from_settings(jobs.settings)
    prefix = jobs.settings.api_prefix  # every route moves under it, "/health" included
    app = FastAPI(
        title="async-job-server",
        version="0.1.0",
        lifespan=lifespan,
        docs_url=f"{prefix}/docs",
        redoc_url=f"{prefix}/redoc",
        openapi_url=f"{prefix}/openapi.json",
    )
    install_error_handlers(app)
    app.include_router(create_jobs_router(jobs, auth), prefix=prefix)
    app.include_router(create_ops_router(jobs), prefix=prefix)
    dashboard_path = f"{prefix}{DASHBOARD_PATH}"
    app.include_router(create_dashboard_router(jobs, auth, path=dashboard_path))
    app.add_middleware(BodySizeLimit, max_bytes=max_body_bytes)
    if jobs.tracing.enabled:
        app.add_middleware(TraceContextMiddleware)
    if auth is not None:  # a request without a token is refused unread
        app.add_middleware(TokenAuthMiddleware, auth=auth, own_auth_prefixes=(dashboard_path,))
    if jobs.settings.cors_origins:  # outermost: a preflight carries no token
        app.add_middleware(
            CORSMiddleware,
            allow_origins=list(jobs.settings.cors_origins),
            allow_methods=["GET", "POST", "DELETE", "OPTIONS"],
            allow_headers=["Authorization", "Content-Type"],
        )
    if auth is None:
        log.warning("no API token is configured: the API is open to anyone who can reach it")
    return app


class _Runnable(Protocol):
    async def run(self) -> Any: ...

    def stop(self) -> None: ...


@contextlib.asynccontextmanager
async def _running(app: FastAPI, name: str, runner: _Runnable | None) -> AsyncIterator[None]:
    """Run ``runner`` (a worker, a scheduler) for as long as the app runs; it is
    ``app.state.<name>`` (None without one)."""
    setattr(app.state, name, runner)
    if runner is None:
        yield
        return
    task = asyncio.create_task(runner.run(), name=f"async-jobs-{name}")
    try:
        yield
    finally:
        runner.stop()
        await task
