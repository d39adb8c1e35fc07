"""The standalone HTTP app (``async-jobs api`` and ``async-jobs serve``), built from the same
router an application can mount itself."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator

from fastapi import FastAPI

from async_jobs.api.errors import install_error_handlers
from async_jobs.api.limits import DEFAULT_MAX_BODY_BYTES, BodySizeLimit
from async_jobs.api.router import create_jobs_router
from async_jobs.app import JobApp
from async_jobs.core.worker import WorkerConfig

log = logging.getLogger("async_jobs.api")


def create_api(
    jobs: JobApp,
    *,
    worker: WorkerConfig | None = None,
    migrate: bool = False,
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
) -> FastAPI:
    """The API app. With ``worker``, a worker runs in the same process (``serve``); with
    ``migrate``, the schema is created or upgraded at start-up."""

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await jobs.open()
        try:
            if migrate:
                await jobs.migrate()
            async with _running_worker(app, jobs, worker):
                yield
        finally:
            await jobs.close()

    app = FastAPI(title="async-job-server", version="0.1.0", lifespan=lifespan)
    install_error_handlers(app)
    app.include_router(create_jobs_router(jobs))
    app.add_middleware(BodySizeLimit, max_bytes=max_body_bytes)
    return app


@contextlib.asynccontextmanager
async def _running_worker(
    app: FastAPI, jobs: JobApp, config: WorkerConfig | None
) -> AsyncIterator[None]:
    """Run a worker for as long as the app runs; ``app.state.worker`` is it (or None)."""
    app.state.worker = None
    if config is None:
        yield
        return
    worker = app.state.worker = jobs.worker(config)
    task = asyncio.create_task(worker.run(), name="async-jobs-worker")
    try:
        yield
    finally:
        worker.stop()
        await task
