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

import dataclasses
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from datetime import datetime
from types import ModuleType
from typing import Any, TypeVar, Unpack

from async_jobs.core.builder import JobBuilder
from async_jobs.core.executor import AttemptLimits
from async_jobs.core.health import Readiness
from async_jobs.core.maintenance import PeriodicJob, PeriodicRunner, Retention
from async_jobs.core.metrics import Metrics, MetricsConfig, StoreGauges
from async_jobs.core.reaper import Reaper
from async_jobs.core.registry import (
    Handler,
    HandlerOptions,
    JobOptions,
    Registry,
    periodic_marks,
)
from async_jobs.core.scheduler import ROLE as CHORES_ROLE
from async_jobs.core.scheduler import Scheduler, SchedulerConfig
from async_jobs.core.settings import Settings
from async_jobs.core.tracing import Tracing
from async_jobs.core.waiters import FinishWaiters
from async_jobs.core.webhooks import WebhookConfig, WebhookSender
from async_jobs.core.worker import Worker, WorkerConfig
from async_jobs.domain.errors import (
    ConfigurationError,
    InvalidJobError,
    InvalidTransitionError,
    JobNotFoundError,
    UnknownJobTypeError,
)
from async_jobs.domain.jobs import (
    DEFAULT_TENANT,
    Job,
    JobFilter,
    JobId,
    JobPage,
    JobScan,
    JobState,
    NewJob,
    PageCursor,
    Priority,
    ScanRequest,
)
from async_jobs.domain.requests import MAX_BATCH_SIZE as MAX_BATCH_SIZE
from async_jobs.domain.requests import MAX_PAGE_SIZE as MAX_PAGE_SIZE
from async_jobs.domain.requests import EnqueueRequest as EnqueueRequest
from async_jobs.domain.retry import Backoff
from async_jobs.domain.scheduling import Leader, RetentionPolicy, Stats, UseCaseState
from async_jobs.domain.validation import check_filter, check_lookup, check_name
from async_jobs.domain.webhooks import WebhookState
from async_jobs.domain.workers import LiveProcess
from async_jobs.ports import JobStore, Transport
from async_jobs.stores import store_from_dsn
from async_jobs.transports.sqs import SqsConfig
from async_jobs.wiring import Wiring

T = TypeVar("T")


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
        metrics: Metrics | None = None,
        tracing: Tracing | None = None,
    ) -> None:
        """``strict_types``: refuse to enqueue types with no registered handler. By default
        it is on as soon as any handler is registered, and off for a pure producer.
        ``metrics``: this app's Prometheus metrics (default: counting, per
        ``ASYNC_JOBS_METRICS_*``; ``Metrics.off()`` counts nothing). ``tracing``:
        OpenTelemetry spans (default: on when ``opentelemetry-api`` is installed)."""
        self.settings = settings or Settings.from_env()
        if dsn is not None:
            self.settings = dataclasses.replace(self.settings, db_dsn=dsn)
        self.registry = Registry()
        self.store: JobStore = store or store_from_dsn(self.settings.db_dsn)
        self._opened = 0
        self.limits = self.settings.limits()
        self._builder = JobBuilder(self.registry, self.settings, self.limits, strict_types)
        self._waiters = FinishWaiters(self.store)
        self.periodic_jobs: list[PeriodicJob] = []
        self._declared_periodic = False
        for module in (*self.settings.handlers, *handler_modules):
            self.registry.add_module(module)
        self.metrics = metrics or Metrics(
            MetricsConfig(
                tenant_label=self.settings.metrics_tenant_label,
                tenant_cap=self.settings.metrics_tenant_cap,
            )
        )
        self.metrics.known_types(self.registry)
        self.tracing = tracing or Tracing()

    def serve_store_gauges(self) -> StoreGauges:
        """Make this process's ``/metrics`` report the store gauges (the API's and the
        scheduler's do; workers' do not, so that N workers do not query N times)."""
        if self.metrics.gauges is None:
            self.metrics.gauges = StoreGauges(self.store, on_error=self.metrics.store_error)
        return self.metrics.gauges

    def _wiring(self) -> Wiring:
        return Wiring(
            self.settings, self.store, self.registry, self.limits, self.metrics, self.tracing
        )

    # -- handlers ---------------------------------------------------------------------------

    def job(self, name: str | None = None, **options: Unpack[JobOptions]) -> Callable[[T], T]:
        """Register a function ``(ctx, payload)`` or a class with ``handle(ctx, payload)``.
        ``non_retryable``: exception types that fail the job at once, without retries."""
        handler_options = HandlerOptions(name, **options)

        def register(obj: T) -> T:
            self.registry.add(obj, handler_options)
            return obj

        return register

    def periodic(
        self,
        cron: str,
        *,
        name: str | None = None,
        payload: Mapping[str, Any] | None = None,
        **options: Any,
    ) -> Callable[[T], T]:
        """Register a handler (as ``job`` does, with its defaults) and enqueue it on a cron
        schedule (five fields, UTC): ``@app.periodic("*/5 * * * *")``. ``name`` names the
        schedule (default: the job type); ``options`` are ``enqueue``'s keyword arguments
        (``tenant_id``, ``priority``...). Each tick is enqueued once, by the leading
        scheduler; see ``PeriodicRunner`` for missed ticks."""

        def register(obj: T) -> T:
            try:  # stacked on @app.job: registered already, with its own options
                job_type = self._type_name(obj)  # type: ignore[arg-type]
            except UnknownJobTypeError:
                job_type = self.registry.add(obj).type
            self.add_periodic(cron, job_type, name=name, payload=payload, **options)
            return obj

        return register

    def add_periodic(
        self,
        cron: str,
        job_type: str,
        *,
        name: str | None = None,
        payload: Mapping[str, Any] | None = None,
        **options: Any,
    ) -> PeriodicJob:
        """Enqueue ``job_type`` on a cron schedule (for a handler registered otherwise, or
        declared in configuration)."""
        unknown = set(options) - {f.name for f in dataclasses.fields(EnqueueRequest)}
        if unknown or {"type", "payload", "idempotency_key"} & set(options):
            bad = sorted(unknown | ({"type", "payload", "idempotency_key"} & set(options)))
            raise ConfigurationError(f"periodic job options: {', '.join(bad)} not allowed")
        job = PeriodicJob(
            check_name(name or job_type, "name"), cron, job_type, dict(payload or {}), options
        )
        if any(p.name == job.name for p in self.periodic_jobs):
            raise ConfigurationError(f"a periodic job named {job.name!r} exists already")
        self.build(EnqueueRequest(job_type, job.payload, **options))  # fail now, not at a tick
        self.periodic_jobs.append(job)
        return job

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

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    async def migrate(self) -> list[str]:
        return await self.store.migrate()

    async def readiness(self) -> Readiness:
        """Store (a query, timed), schema (no migration pending) and transport (its broker
        answers), each reported apart; see ``core.health``."""
        return await self._wiring().readiness()

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
        backoff: Backoff | Mapping[str, Any] | None = None,
        expires_at: datetime | None = None,
        connection: object | None = None,
    ) -> Job:
        """Store one job and return it. With an ``idempotency_key`` the tenant already used
        for the same request, the existing job comes back instead of a new one.

        ``backoff``: this job's own retry policy instead of its handler's. ``expires_at``:
        if the job has not started by then, it ends ``cancelled`` (reason ``expired``).
        A tenant over its ``max_pending`` quota gets ``QuotaExceededError``. ``connection``:
        an asyncpg connection or SQLAlchemy ``AsyncSession`` of the caller's, whose open
        transaction the job joins: it runs only if the caller commits (PostgreSQL only)."""
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
            backoff,
            expires_at,
        )
        job, _ = await self.enqueue_checked(request, connection=connection)
        return job

    async def enqueue_checked(
        self, request: EnqueueRequest, *, connection: object | None = None
    ) -> tuple[Job, bool]:
        """Like ``enqueue``, also saying whether the job was created (False: an existing job
        with the same idempotency key)."""
        new = self._builder.build(request)
        if self.tracing.sending():
            with self.tracing.send((new,)):
                job, created = await self._insert_one(new, connection)
        else:
            job, created = await self._insert_one(new, connection)
        if created:
            self.metrics.jobs_enqueued((job,))
        return job, created

    async def _insert_one(self, new: NewJob, connection: object | None) -> tuple[Job, bool]:
        if connection is not None:
            [(job, created)] = await self.store.insert_jobs_in(connection, [new])
            return job, created
        return await self.store.insert_job(new)

    async def enqueue_many(
        self, requests: Sequence[EnqueueRequest], *, connection: object | None = None
    ) -> list[Job]:
        """Store many jobs in one transaction: all of them or, on any error,
        none. ``connection`` as for ``enqueue``."""
        return [job for job, _ in await self.enqueue_many_checked(requests, connection=connection)]

    async def enqueue_many_checked(
        self, requests: Sequence[EnqueueRequest], *, connection: object | None = None
    ) -> list[tuple[Job, bool]]:
        """Like ``enqueue_many``, also saying which jobs were created."""
        if len(requests) > MAX_BATCH_SIZE:
            raise InvalidJobError(
                f"a batch holds at most {MAX_BATCH_SIZE} jobs, not {len(requests)}", field="jobs"
            )
        news: list[NewJob] = []
        if self.tracing.sending():  # one span for the batch, its context in every job
            news.extend(self._builder.built(requests, []))
            with self.tracing.send(news):
                stored = await (
                    self.store.insert_jobs(news)
                    if connection is None
                    else self.store.insert_jobs_in(connection, news)
                )
        elif connection is not None:
            news.extend(self._builder.built(requests, []))
            stored = await self.store.insert_jobs_in(connection, news)
        else:
            # Built as the store draws them: it writes the first jobs while it validates the
            # next. A request that does not validate still leaves nothing stored.
            stored = await self.store.insert_jobs(self._builder.built(requests, news))
        self.metrics.jobs_enqueued(job for job, created in stored if created)
        return stored

    def build(self, request: EnqueueRequest) -> NewJob:
        """Validate a request and fill in the defaults of its handler and use case."""
        return self._builder.build(request)

    def _type_name(self, job_type: str | type | Callable[..., Any]) -> str:
        if isinstance(job_type, str):
            return job_type
        for handler in self.registry:
            if handler.source is job_type:
                return handler.type
        raise UnknownJobTypeError(f"{job_type!r} is not a registered handler")

    # -- reads ------------------------------------------------------------------------------

    async def get_job(self, job_id: JobId | uuid.UUID | str, tenant_id: str | None = None) -> Job:
        """The job, or ``JobNotFoundError`` (also for another tenant's job). A job with a
        ``webhook_url`` comes with its deliveries (``job.webhook``), read by a second query."""
        parsed = parse_job_id(job_id)
        job = await self.store.get_job(parsed, check_lookup(tenant_id, "tenant_id"))
        if job is None:
            raise JobNotFoundError(f"no job {parsed}")
        if job.webhook_url is not None:
            deliveries = await self.store.get_webhook_deliveries(job.id)
            job = dataclasses.replace(job, webhook=WebhookState.of(deliveries))
        return job

    async def find_by_idempotency_key(self, key: str, tenant_id: str | None) -> list[Job]:
        """The job holding ``key`` in ``tenant_id`` (the default tenant when None); keys are
        unique per tenant."""
        tenant = check_lookup(tenant_id, "tenant_id") or DEFAULT_TENANT
        job = await self.store.get_job_by_key(tenant, check_lookup(key, "idempotency_key"))
        return [job] if job is not None else []

    async def list_jobs(
        self, where: JobFilter | None = None, limit: int = 100, after: PageCursor | None = None
    ) -> JobPage:
        if not 1 <= limit <= MAX_PAGE_SIZE:
            raise InvalidJobError(f"limit must be between 1 and {MAX_PAGE_SIZE}", field="limit")
        return await self.store.list_jobs(check_filter(where or JobFilter()), limit, after)

    async def scan_jobs(
        self,
        where: JobFilter | None = None,
        limit: int = 100,
        *,
        budget: int,
        after: PageCursor | None = None,
        count_to: int = 0,
    ) -> JobScan:
        """A listing that reads at most ``budget`` jobs whatever the filter (see
        ``JobStore.scan_jobs`` and ``JobScan``): the first ``limit`` matches, the matches
        counted up to ``count_to``, and where to go on from."""
        if not 1 <= limit <= MAX_PAGE_SIZE:
            raise InvalidJobError(f"limit must be between 1 and {MAX_PAGE_SIZE}", field="limit")
        if budget < 1 or count_to < 0:
            raise InvalidJobError("budget must be at least 1, count_to at least 0")
        request = ScanRequest(
            where=check_filter(where or JobFilter()),
            limit=limit,
            budget=budget,
            after=after,
            count_to=count_to,
        )
        return await self.store.scan_jobs(request)

    # -- control ----------------------------------------------------------------------------

    async def cancel(self, job_id: JobId | uuid.UUID | str, tenant_id: str | None = None) -> Job:
        """Cancel a job: a pending or queued job ends ``cancelled`` at once; a running one is
        flagged, its handler is stopped by its worker and it ends ``cancelled`` (unless it
        has already succeeded); asking again while it runs changes nothing. A job that has
        already ended (succeeded, failed or cancelled) is an ``InvalidTransitionError``."""
        parsed = parse_job_id(job_id)
        answer = await self.store.cancel_job(parsed, check_lookup(tenant_id, "tenant_id"))
        if answer is None:
            raise JobNotFoundError(f"no job {parsed}")
        job, changed = answer
        if changed and job.status.is_terminal:  # never started (a running one ends later)
            self.metrics.job_cancelled(job)
        if not changed and job.status.is_terminal:
            raise InvalidTransitionError(
                f"job {parsed} has already ended ({job.status.value}); only pending, queued "
                "or running jobs can be cancelled",
                status=job.status.value,
            )
        return job

    async def retry(self, job_id: JobId | uuid.UUID | str, tenant_id: str | None = None) -> Job:
        """Send a failed or cancelled job back to pending, due now, with at least one more
        attempt; its history stays. Other states, and a job past its ``expires_at``, are an
        ``InvalidTransitionError``."""
        parsed = parse_job_id(job_id)
        answer = await self.store.retry_job(parsed, check_lookup(tenant_id, "tenant_id"))
        if answer is None:
            raise JobNotFoundError(f"no job {parsed}")
        job, changed = answer
        if changed:
            return job
        if job.status in (JobState.FAILED, JobState.CANCELLED) and job.expires_at is not None:
            raise InvalidTransitionError(
                f"job {parsed} expired at {job.expires_at.isoformat()}: retried, it would only"
                " expire again; enqueue it anew with a later expires_at",
                status=job.status.value,
            )
        raise InvalidTransitionError(
            f"job {parsed} is {job.status.value}; only failed or cancelled jobs can be retried",
            status=job.status.value,
        )

    def reaper(self) -> Reaper:
        """The reaper of this app's store (``await app.reaper().run_once()``)."""
        return Reaper(self.store)

    async def pause(self, use_case: str) -> UseCaseState:
        """Stop starting jobs of a use case (running ones finish); stored, so it survives
        restarts. Enqueueing goes on."""
        return await self.store.set_paused(check_name(use_case, "use_case"), True)

    async def resume(self, use_case: str) -> UseCaseState:
        return await self.store.set_paused(check_name(use_case, "use_case"), False)

    async def use_cases(self) -> list[UseCaseState]:
        return await self.store.list_use_cases()

    async def processes(self) -> tuple[list[LiveProcess], Leader | None]:
        """The live workers and schedulers (``domain.workers``), and who leads the chores."""
        return await self.store.list_processes(), await self.leader()

    async def stats(self, tenant_id: str | None = None, with_counts: bool = True) -> Stats:
        """See ``JobStore.stats``; ``with_counts=False`` skips the count of every job."""
        return await self.store.stats(check_lookup(tenant_id, "tenant_id"), with_counts)

    async def count_jobs(self, where: JobFilter, cap: int) -> int:
        """Jobs matching ``where``, counted no further than ``cap``."""
        return await self.store.count_jobs(check_filter(where), cap)

    async def cleanup(self, older_than_seconds: float | None = None) -> dict[str, int]:
        """Delete terminal jobs now: older than ``older_than_seconds`` whatever their state,
        or by the configured retention policy. Returns state -> jobs deleted."""
        if older_than_seconds is not None and not 0 <= older_than_seconds < 1e10:
            raise InvalidJobError("older_than must be a number of seconds >= 0", field="older_than")
        policy = (
            self.settings.retention
            if older_than_seconds is None
            else RetentionPolicy.uniform(older_than_seconds)
        )
        return await Retention(self.store, policy).run_once()

    async def pause_periodic(self, name: str, paused: bool = True) -> None:
        """Pause (or, ``paused=False``, resume) the periodic job ``name``."""
        if not any(p.name == name for p in self.declared_periodic()):
            raise InvalidJobError(f"no periodic job is named {name!r}", field="name")
        await self.store.set_periodic_paused(name, paused)

    def declared_periodic(self) -> list[PeriodicJob]:
        """Every periodic job of this app: added by code, marked in handler modules, and
        declared in ``ASYNC_JOBS_PERIODIC_JOBS``."""
        self._add_declared_periodic()
        return list(self.periodic_jobs)

    def _add_declared_periodic(self) -> None:
        """Add the periodic jobs marked with ``@async_jobs.periodic`` in handler modules and
        those of ``ASYNC_JOBS_PERIODIC_JOBS`` (once, when a scheduler is built, so that
        handlers registered after the app was made count)."""
        if self._declared_periodic:
            return
        self._declared_periodic = True
        for handler in self.registry:
            for mark in periodic_marks(handler.source):
                self.add_periodic(
                    mark.cron, handler.type, name=mark.name, payload=mark.payload, **mark.options
                )
        own = {"cron", "type", "name", "payload"}
        for entry in self.settings.periodic_jobs:
            options = {k: v for k, v in entry.items() if k not in own}
            self.add_periodic(
                entry["cron"],
                entry["type"],
                name=entry.get("name"),
                payload=entry.get("payload"),
                **options,
            )

    def scheduler(self, config: SchedulerConfig | None = None) -> Scheduler:
        """A scheduler for this app (``run()`` it, ``stop()`` it): leads or stands by, and
        while leading reaps, expires, enqueues periodic jobs, applies retention and sends
        webhooks."""
        config = config or self.scheduler_config()
        self._add_declared_periodic()
        return self._wiring().scheduler(
            config, self.periodic_runner() if self.periodic_jobs else None
        )

    def sqs_config(self) -> SqsConfig:
        """The sqs transport's configuration, from the settings."""
        return self._wiring().sqs_config()

    async def check_broker(self) -> str | None:
        """Raise ``AsyncJobsError`` unless the transport's broker (Redis) answers; returns
        its name, or None when the transport has no broker to check."""
        return await self._wiring().check_broker()

    def max_attempts_ceiling(self) -> int:
        """The most attempts a job of a registered type makes by default."""
        return self._wiring().max_attempts_ceiling()

    def webhook_sender(self, config: WebhookConfig | None = None) -> WebhookSender:
        """What sends this app's webhooks (the leading scheduler runs it every round);
        ``config`` defaults to the settings' (secrets, allowed hosts, attempts, timeout)."""
        return self._wiring().webhook_sender(config)

    def periodic_runner(self, clock: Callable[[], datetime] | None = None) -> PeriodicRunner:
        """What enqueues this app's periodic jobs (the leading scheduler runs it every
        round); ``clock`` for tests that move time."""
        return self._wiring().periodic_runner(self.periodic_jobs, self._enqueue_tick, clock)

    def scheduler_config(
        self, process_role: str = CHORES_ROLE, process_id: str | None = None
    ) -> SchedulerConfig:
        """``process_role`` and ``process_id`` name this process in the lease row (a worker
        standing for the chores passes ``"worker"`` and its worker id)."""
        return self._wiring().scheduler_config(process_role, process_id)

    async def leader(self) -> Leader | None:
        """The process that leads the chores now (``process_role``: scheduler, worker or
        serve; ``process_id``), or None when none does (no scheduler, worker or serve
        process runs, or the last leader died less than a lease ago)."""
        return await self.store.current_leader(CHORES_ROLE)

    async def _enqueue_tick(self, job: PeriodicJob, tick: datetime) -> None:
        request = EnqueueRequest(
            job.type, job.payload, idempotency_key=job.idempotency_key(tick), **job.options
        )
        await self.enqueue_checked(request)

    async def wait_for(
        self, job_id: JobId | uuid.UUID | str, timeout: float, tenant_id: str | None = None
    ) -> Job:
        """The job once terminal, or as it stands after ``timeout`` seconds. Woken by the
        store when the job may have ended (LISTEN/NOTIFY on PostgreSQL), not by polling; the
        job is re-read now and then regardless, in case a wake-up was lost."""
        parsed = parse_job_id(job_id)
        return await self._waiters.wait_for(
            parsed, timeout, lambda: self.get_job(parsed, tenant_id)
        )

    # -- workers ----------------------------------------------------------------------------

    def worker(
        self,
        config: WorkerConfig | None = None,
        *,
        transport: Transport | None = None,
        on_ready: Callable[[], None] | None = None,
    ) -> Worker:
        """A worker for the registered handlers (``run()`` it, ``stop()`` it)."""
        return self._wiring().worker(config, transport, on_ready)

    def attempt_limits(self) -> AttemptLimits:
        return self._wiring().attempt_limits()

    async def run_worker(self, config: WorkerConfig | None = None) -> Worker:
        """Run a worker until it stops (burst mode: until nothing is left); returns it."""
        worker = self.worker(config)
        await worker.run()
        return worker


def parse_job_id(value: JobId | uuid.UUID | str) -> JobId:
    if isinstance(value, uuid.UUID):
        return JobId(value)
    try:
        return JobId(uuid.UUID(str(value)))
    except ValueError:
        raise JobNotFoundError(f"no job {str(value)[:100]!r}") from None
