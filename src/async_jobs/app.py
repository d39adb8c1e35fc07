"""``JobApp``: the composition root. It owns the handler registry, opens the store named by
the settings, enqueues, reads jobs and builds workers.

    app = JobApp()                      # settings from ASYNC_JOBS_* (SQLite by default)

    @app.job("send_email", use_case="notifications", max_attempts=5)
    async def send_email(ctx, payload):
        ...

    async with app:
        job = await app.enqueue("send_email", {"to": "a@b.c"}, priority="high", delay=30)
"""

from __future__ import annotations

import asyncio
import dataclasses
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from datetime import datetime
from types import ModuleType, TracebackType
from typing import Any, TypeVar

from async_jobs.core.registry import Handler, HandlerOptions, Registry
from async_jobs.core.settings import Settings
from async_jobs.core.worker import Worker, WorkerConfig
from async_jobs.domain.errors import (
    ConfigurationError,
    IdempotencyConflictError,
    InvalidJobError,
    JobNotFoundError,
    UnknownJobTypeError,
)
from async_jobs.domain.jobs import (
    ClaimRequest,
    Job,
    JobFilter,
    JobId,
    JobPage,
    NewJob,
    PageCursor,
    Priority,
)
from async_jobs.domain.retry import ExponentialBackoff
from async_jobs.domain.validation import build_new_job
from async_jobs.ports import JobStore, Transport
from async_jobs.stores import store_from_dsn
from async_jobs.transports.direct import DirectTransport

T = TypeVar("T")

MAX_PAGE_SIZE = 1000


@dataclasses.dataclass(frozen=True, slots=True)
class EnqueueRequest:
    """One job of ``enqueue_many``; fields as the keyword arguments of ``enqueue``."""

    type: str
    payload: Mapping[str, Any] | None = None
    tenant_id: str | None = None
    use_case: str | None = None
    priority: Priority | str | None = None
    delay: float | None = None
    run_at: datetime | None = None
    delay_tolerance_seconds: float | None = None
    max_attempts: int | None = None
    timeout_seconds: float | None = None
    idempotency_key: str | None = None
    webhook_url: str | None = None


class JobApp:
    """Registry, store and workers of one application."""

    def __init__(
        self,
        dsn: str | None = None,
        *,
        settings: Settings | None = None,
        store: JobStore | None = None,
        handler_modules: Iterable[str | ModuleType] = (),
        strict_types: bool | None = None,
    ) -> None:
        """``strict_types``: refuse to enqueue types with no registered handler. By default
        it is on as soon as any handler is registered, and off for a pure producer."""
        self.settings = settings or Settings.from_env()
        if dsn is not None:
            self.settings = dataclasses.replace(self.settings, db_dsn=dsn)
        self.registry = Registry()
        self.store: JobStore = store or store_from_dsn(self.settings.db_dsn)
        self._strict_types = strict_types
        self._opened = 0
        for module in (*self.settings.handlers, *handler_modules):
            self.registry.add_module(module)

    # -- handlers ---------------------------------------------------------------------------

    def job(
        self,
        name: str | None = None,
        *,
        use_case: str | None = None,
        priority: Priority | str | None = None,
        max_attempts: int | None = None,
        timeout_seconds: float | None = None,
        delay_tolerance_seconds: float | None = None,
        backoff: ExponentialBackoff | None = None,
    ) -> Callable[[T], T]:
        """Register a function ``(ctx, payload)`` or a class with ``handle(ctx, payload)``."""
        options = HandlerOptions(
            name,
            use_case,
            priority,
            max_attempts,
            timeout_seconds,
            delay_tolerance_seconds,
            backoff,
        )

        def register(obj: T) -> T:
            self.registry.add(obj, options)
            return obj

        return register

    def register(self, obj: object) -> Handler:
        """Register a handler marked with ``@async_jobs.job`` (or with default options)."""
        return self.registry.add(obj)

    def include_module(self, module: str | ModuleType) -> list[Handler]:
        """Import a module and register every handler it marked with ``@async_jobs.job``."""
        return self.registry.add_module(module)

    # -- life cycle -------------------------------------------------------------------------

    async def open(self) -> None:
        if self._opened == 0:
            await self.store.open()
        self._opened += 1

    async def close(self) -> None:
        self._opened = max(self._opened - 1, 0)
        if self._opened == 0:
            await self.store.close()

    async def __aenter__(self) -> JobApp:
        await self.open()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    async def migrate(self) -> list[str]:
        return await self.store.migrate()

    # -- enqueue ----------------------------------------------------------------------------

    async def enqueue(
        self,
        job_type: str | type | Callable[..., Any],
        payload: Mapping[str, Any] | None = None,
        *,
        tenant_id: str | None = None,
        use_case: str | None = None,
        priority: Priority | str | None = None,
        delay: float | None = None,
        run_at: datetime | None = None,
        delay_tolerance_seconds: float | None = None,
        max_attempts: int | None = None,
        timeout_seconds: float | None = None,
        idempotency_key: str | None = None,
        webhook_url: str | None = None,
    ) -> Job:
        """Store one job and return it. With an ``idempotency_key`` the tenant already used
        for the same request, the existing job comes back instead of a new one."""
        request = EnqueueRequest(
            self._type_name(job_type),
            payload,
            tenant_id,
            use_case,
            priority,
            delay,
            run_at,
            delay_tolerance_seconds,
            max_attempts,
            timeout_seconds,
            idempotency_key,
            webhook_url,
        )
        job, _ = await self.enqueue_checked(request)
        return job

    async def enqueue_checked(self, request: EnqueueRequest) -> tuple[Job, bool]:
        """Like ``enqueue``, also saying whether the job was created (False: an existing job
        with the same idempotency key)."""
        new = self.build(request)
        job, created = await self.store.insert_job(new)
        _check_same_request(new, job, created)
        return job, created

    async def enqueue_many(self, requests: Sequence[EnqueueRequest]) -> list[Job]:
        """Store many jobs in one transaction: all of them or, on any error, none."""
        news = [self.build(r) for r in requests]
        stored = await self.store.insert_jobs(news)
        for new, (job, created) in zip(news, stored, strict=True):
            _check_same_request(new, job, created)
        return [job for job, _ in stored]

    def build(self, request: EnqueueRequest) -> NewJob:
        """Validate a request and fill in the defaults of its handler and use case."""
        handler = self.registry.get(request.type)
        if handler is None and self._requires_known_types():
            known = ", ".join(sorted(self.registry.types)) or "none"
            raise UnknownJobTypeError(
                f"unknown job type {request.type!r}; registered types: {known}", field="type"
            )
        default = handler or _NO_HANDLER
        use_case = _first(request.use_case, default.use_case)
        tolerance = _first(request.delay_tolerance_seconds, default.delay_tolerance_seconds)
        if tolerance is None and use_case is not None:
            tolerance = self.settings.delay_tolerance_for(use_case)
        return build_new_job(
            request.type,
            request.payload,
            tenant_id=request.tenant_id,
            use_case=use_case,
            priority=_first(request.priority, default.priority),
            max_attempts=_first(request.max_attempts, default.max_attempts),
            delay=request.delay,
            run_at=request.run_at,
            delay_tolerance_seconds=tolerance,
            timeout_seconds=_first(request.timeout_seconds, default.timeout_seconds),
            idempotency_key=request.idempotency_key,
            webhook_url=request.webhook_url,
        )

    def _requires_known_types(self) -> bool:
        if self._strict_types is not None:
            return self._strict_types
        return len(self.registry) > 0

    def _type_name(self, job_type: str | type | Callable[..., Any]) -> str:
        if isinstance(job_type, str):
            return job_type
        for handler in self.registry:
            if handler.source is job_type:
                return handler.type
        raise UnknownJobTypeError(f"{job_type!r} is not a registered handler")

    # -- reads ------------------------------------------------------------------------------

    async def get_job(self, job_id: JobId | uuid.UUID | str, tenant_id: str | None = None) -> Job:
        """The job, or ``JobNotFoundError`` (also for another tenant's job)."""
        parsed = parse_job_id(job_id)
        job = await self.store.get_job(parsed, tenant_id)
        if job is None:
            raise JobNotFoundError(f"no job {parsed}")
        return job

    async def list_jobs(
        self, where: JobFilter | None = None, limit: int = 100, after: PageCursor | None = None
    ) -> JobPage:
        if not 1 <= limit <= MAX_PAGE_SIZE:
            raise InvalidJobError(f"limit must be between 1 and {MAX_PAGE_SIZE}", field="limit")
        return await self.store.list_jobs(where or JobFilter(), limit, after)

    async def wait_for(
        self, job_id: JobId, timeout: float, tenant_id: str | None = None, poll: float = 0.1
    ) -> Job:
        """The job once terminal, or as it stands after ``timeout`` seconds."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            job = await self.get_job(job_id, tenant_id)
            remaining = deadline - loop.time()
            if job.status.is_terminal or remaining <= 0:
                return job
            await asyncio.sleep(min(poll, remaining))
            poll = min(poll * 1.5, 1.0)

    # -- workers ----------------------------------------------------------------------------

    def worker(
        self,
        config: WorkerConfig | None = None,
        *,
        transport: Transport | None = None,
        on_ready: Callable[[], None] | None = None,
    ) -> Worker:
        """A worker for the registered handlers (``run()`` it, ``stop()`` it)."""
        if not len(self.registry):
            raise ConfigurationError(
                "no job handlers are registered: name their modules with --handlers or "
                "ASYNC_JOBS_HANDLERS"
            )
        config = config or WorkerConfig(
            lease_seconds=self.settings.lease_seconds,
            poll_interval_seconds=self.settings.poll_interval_seconds,
        )
        if transport is None:
            claim = ClaimRequest(
                worker_id=config.worker_id,
                limit=config.concurrency,
                lease_seconds=config.lease_seconds,
                use_cases=config.use_cases,
                types=self.registry.types,
            )
            transport = DirectTransport(self.store, claim)
        return Worker(self.registry, self.store, transport, config, on_ready=on_ready)

    async def run_worker(self, config: WorkerConfig | None = None) -> Worker:
        """Run a worker until it stops (burst mode: until nothing is left); returns it."""
        worker = self.worker(config)
        await worker.run()
        return worker


_NO_HANDLER = HandlerOptions()


def _first(own: T | None, default: T | None) -> T | None:
    """A request's own value when it gave one, else its handler's default."""
    return own if own is not None else default


def parse_job_id(value: JobId | uuid.UUID | str) -> JobId:
    if isinstance(value, uuid.UUID):
        return JobId(value)
    try:
        return JobId(uuid.UUID(str(value)))
    except ValueError:
        raise JobNotFoundError(f"no job {str(value)[:100]!r}") from None


def _check_same_request(new: NewJob, job: Job, created: bool) -> None:
    if created:
        return
    if (new.type, new.payload, new.use_case) != (job.type, job.payload, job.use_case):
        raise IdempotencyConflictError(
            f"idempotency key {new.idempotency_key!r} was already used for another request",
            job_id=str(job.id),
        )
