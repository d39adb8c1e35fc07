"""A FastAPI application with background jobs: its own endpoints enqueue and show jobs, a
worker runs in the same process for the application's life, and the library's own routes are
mounted under ``/async-jobs``.

uvicorn examples.fastapi_example:app                       # embedded SQLite file in a temp dir
ASYNC_JOBS_DB_DSN=postgresql://postgres@127.0.0.1/mydb uvicorn examples.fastapi_example:app

curl -s -X POST localhost:8000/jobs -H 'content-type: application/json' \\
     -d '{"type": "calculation", "numbers": [1, 2, 3.5]}'      # {"id": "...", ...}
curl -s localhost:8000/jobs/ID                                # "result": {"sum": 6.5}
curl -s localhost:8000/async-jobs/jobs                        # the library's own routes
open http://127.0.0.1:8000/async-jobs/dashboard               # and its dashboard
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import tempfile
from collections.abc import AsyncIterator
from typing import Any, Literal

from fastapi import FastAPI, HTTPException
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field

from async_jobs import Job, JobApp, JobContext, JobNotFoundError, StoreError, WorkerConfig
from async_jobs.api import create_dashboard_router, create_jobs_router
from async_jobs.api.errors import install_error_handlers

default_dsn = f"sqlite:///{tempfile.mkdtemp()}/fastapi_example.db"
jobs = JobApp(os.environ.get("ASYNC_JOBS_DB_DSN", default_dsn))


@jobs.job()  # registered as "say_hello": the class name, snake_case, without "Job"
class SayHelloJob:
    async def handle(self, ctx: JobContext, payload: dict[str, Any]) -> str:
        print("say hello", flush=True)
        return f"hello, {payload.get('name') or 'world'}"


@jobs.job()  # registered as "calculation"
class CalculationJob:
    async def handle(self, ctx: JobContext, payload: dict[str, Any]) -> dict[str, float]:
        numbers = [float(n) for n in payload.get("numbers", [])]
        return {"sum": sum(numbers), "count": len(numbers)}


@contextlib.asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    """Open and migrate the store, and run a worker until the application stops."""
    async with jobs:
        await jobs.migrate()
        worker = jobs.worker(WorkerConfig(concurrency=4, poll_interval_seconds=0.2))
        running = asyncio.create_task(worker.run())
        try:
            yield
        finally:
            worker.stop()  # running jobs get the worker's grace period to finish
            await running


app = FastAPI(title="async-jobs FastAPI example", lifespan=lifespan)
# The mounted router raises the library's errors; these handlers turn them into JSON answers
# ({"error": {"code", "message"}}, 404, 409, 422 ...) instead of 500s.
install_error_handlers(app)
app.include_router(create_jobs_router(jobs), prefix="/async-jobs")
# The dashboard signs in with the same tokens as the routes (open when none is configured).
app.include_router(create_dashboard_router(jobs, path="/async-jobs/dashboard"))


class NewJob(BaseModel):
    type: Literal["say_hello", "calculation"]
    name: str | None = Field(default=None, description="say_hello: who to greet.")
    numbers: list[float] = Field(default_factory=list, description="calculation: to add up.")


def _shown(job: Job) -> dict[str, Any]:
    return {
        "id": str(job.id),
        "type": job.type,
        "status": job.status.value,
        "result": job.result,
        "error": None if job.error is None else job.error.message,
    }


@app.post("/jobs", status_code=201)
async def enqueue(body: NewJob) -> dict[str, Any]:
    payload: dict[str, Any] = (
        {"name": body.name} if body.type == "say_hello" else {"numbers": body.numbers}
    )
    return _shown(await jobs.enqueue(body.type, payload))


@app.get("/jobs/{job_id}")
async def show(job_id: str) -> dict[str, Any]:
    try:
        return _shown(await jobs.get_job(job_id))
    except JobNotFoundError:
        raise HTTPException(404, f"no job {job_id}") from None


@app.get("/health", response_model=None)
async def health() -> dict[str, str] | JSONResponse:
    try:
        await jobs.store.ping()
    except StoreError:
        return JSONResponse({"status": "unavailable"}, status_code=503)
    return {"status": "ok"}
