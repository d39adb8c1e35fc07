"""Operations routes: Prometheus ``/metrics`` and ``/health/ready``.

``create_ops_router(jobs)`` mounts them in any FastAPI app (the standalone API includes it);
``OpsServer`` answers the same paths (and ``/health``) on a worker's or scheduler's own port,
``--metrics-port``, with no web framework in the way of the worker's event loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from typing import Literal

from fastapi import APIRouter
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, Field
from starlette.types import ASGIApp, Receive, Scope, Send

from async_jobs.api.schemas import ErrorResponse
from async_jobs.app import JobApp
from async_jobs.core.metrics import CONTENT_TYPE
from async_jobs.core.tracing import request_context

log = logging.getLogger("async_jobs.ops")
_UNEXPECTED = "Any other error, e.g. 500 internal_error (a bug: never on purpose)."


class ComponentReadiness(BaseModel):
    status: Literal["ok", "unavailable"]
    latency_ms: float = Field(description="How long its check took.")
    detail: str | None = Field(None, description="What it is, or why it is not ready.")


class ReadinessResponse(BaseModel):
    status: Literal["ok", "unavailable"]
    components: dict[str, ComponentReadiness] = Field(
        description="store, migrations and transport."
    )


def create_ops_router(jobs: JobApp, *, store_gauges: bool = True) -> APIRouter:
    """``GET /metrics`` (Prometheus text) and ``GET /health/ready`` (200 or 503 JSON, one
    entry per component). Both are open, like ``/health``: they carry no job data.
    ``store_gauges``: report ``async_jobs_jobs`` and the oldest due age (one bounded query
    every few seconds at most, however many scrape)."""
    if store_gauges:
        jobs.serve_store_gauges()
    router = APIRouter(tags=["operations"])

    @router.get(
        "/metrics",
        summary="Prometheus metrics",
        response_class=Response,
        responses={
            200: {"content": {CONTENT_TYPE: {}}, "description": "Prometheus text format."},
            "default": {"model": ErrorResponse, "description": _UNEXPECTED},
        },
    )
    async def metrics() -> Response:
        return Response(await jobs.metrics.expose(), media_type=CONTENT_TYPE)

    @router.get(
        "/health/ready",
        summary="Store, schema and transport ready",
        response_model=None,
        responses={
            200: {
                "model": ReadinessResponse,
                "description": "Every component is ready (one entry each, with latency).",
            },
            503: {
                "model": ReadinessResponse,
                "description": "A component is not ready (its entry says why).",
                "headers": {
                    "Retry-After": {"description": "Seconds", "schema": {"type": "integer"}}
                },
            },
            "default": {"model": ErrorResponse, "description": _UNEXPECTED},
        },
    )
    async def ready() -> JSONResponse:
        readiness = await jobs.readiness()
        headers = None if readiness.ok else {"Retry-After": "5"}
        return JSONResponse(readiness.to_json(), readiness.http_status, headers)

    return router


class TraceContextMiddleware:
    """ASGI: a request's ``traceparent`` becomes the current trace context, so that the
    jobs it enqueues continue the caller's trace (added by ``create_api`` when tracing)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = {
            k.decode("latin-1"): v.decode("latin-1")
            for k, v in scope.get("headers", ())
            if k in (b"traceparent", b"tracestate")
        }
        if not headers:
            await self.app(scope, receive, send)
            return
        with request_context(headers):
            await self.app(scope, receive, send)


class OpsServer:
    """A minimal HTTP/1.1 server for probes and scrapes: ``GET /metrics``, ``/health`` and
    ``/health/ready``; one request per connection."""

    def __init__(self, jobs: JobApp, host: str, port: int) -> None:
        self._jobs = jobs
        self.host = host
        self.port = port
        self._server: asyncio.Server | None = None

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._handle, self.host, self.port)
        sockets = self._server.sockets
        if sockets:
            self.port = sockets[0].getsockname()[1]

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None

    async def __aenter__(self) -> OpsServer:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            async with asyncio.timeout(10):
                request = await reader.readuntil(b"\r\n\r\n")
                method, _, rest = request.decode("latin-1").partition(" ")
                path = rest.partition(" ")[0].partition("?")[0]
                status, content_type, body = await self._answer(method, path)
                head = (
                    f"HTTP/1.1 {status} {_REASONS.get(status, 'OK')}\r\n"
                    f"Content-Type: {content_type}\r\nContent-Length: {len(body)}\r\n"
                    "Connection: close\r\n\r\n"
                )
                writer.write(head.encode() + (body if method != "HEAD" else b""))
                await writer.drain()
        except (TimeoutError, asyncio.IncompleteReadError, ConnectionError, ValueError):
            pass
        finally:
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()

    async def _answer(self, method: str, path: str) -> tuple[int, str, bytes]:
        if method not in ("GET", "HEAD"):
            return _json(405, "method_not_allowed", "only GET")
        if path == "/metrics":
            return 200, CONTENT_TYPE, await self._jobs.metrics.expose()
        if path == "/health":
            return 200, "application/json", b'{"status": "ok"}'
        if path == "/health/ready":
            readiness = await self._jobs.readiness()
            return (
                readiness.http_status,
                "application/json",
                json.dumps(readiness.to_json()).encode(),
            )
        return _json(404, "not_found", f"no route {path[:100]}")


_REASONS = {200: "OK", 404: "Not Found", 405: "Method Not Allowed", 503: "Service Unavailable"}


def _json(status: int, code: str, message: str) -> tuple[int, str, bytes]:
    body = json.dumps({"error": {"code": code, "message": message}}).encode()
    return status, "application/json", body
