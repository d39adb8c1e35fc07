"""The settings wired to components: the worker, the scheduler and what it runs (periodic
jobs, webhooks), and the readiness checks. ``JobApp`` makes a ``Wiring`` of its parts for
each component it builds."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from datetime import datetime

from async_jobs.core.executor import AttemptLimits
from async_jobs.core.health import NotReadyError, Readiness, check_ready
from async_jobs.core.maintenance import EnqueueTick, PeriodicJob, PeriodicRunner
from async_jobs.core.metrics import Metrics
from async_jobs.core.registry import Registry
from async_jobs.core.scheduler import ROLE as CHORES_ROLE
from async_jobs.core.scheduler import Scheduler, SchedulerConfig, leader_holder
from async_jobs.core.settings import Settings
from async_jobs.core.tracing import Tracing
from async_jobs.core.webhooks import WebhookConfig, WebhookSender
from async_jobs.core.worker import Worker, WorkerConfig
from async_jobs.domain.errors import ConfigurationError
from async_jobs.domain.jobs import DEFAULT_MAX_ATTEMPTS, ClaimRequest
from async_jobs.domain.scheduling import Limits
from async_jobs.ports import JobStore, Transport
from async_jobs.transports import registry as transports
from async_jobs.transports.sqs import SqsConfig


@dataclasses.dataclass(frozen=True, slots=True)
class Wiring:
    """An app's parts, from which its components are built."""

    settings: Settings
    store: JobStore
    registry: Registry
    limits: Limits
    metrics: Metrics
    tracing: Tracing

    async def readiness(self) -> Readiness:
        """Store (a query, timed), schema (no migration pending) and transport (its broker
        answers), each reported apart; see ``core.health``."""
        return await check_ready(
            {
                "store": self._check_store,
                "migrations": self._check_migrations,
                "transport": self._check_transport,
            }
        )

    async def _check_store(self) -> str | None:
        await self.store.ping()
        return None

    async def _check_migrations(self) -> str | None:
        pending = await self.store.pending_migrations()
        if pending:
            raise NotReadyError(f"not applied: {', '.join(pending)} (run async-jobs migrate)")
        return None

    async def _check_transport(self) -> str | None:
        broker = await self.check_broker()
        if broker is None:
            return f"{self.settings.transport}: jobs are claimed from the store"
        return f"{self.settings.transport}: {broker} answers"

    def scheduler(self, config: SchedulerConfig, periodic: PeriodicRunner | None) -> Scheduler:
        """A scheduler running ``periodic`` (if any) and this app's webhooks."""
        dispatcher = transports.dispatcher(
            transports.SchedulerSide(
                self.store, self.settings, self.limits, config.holder, metrics=self.metrics
            )
        )
        return Scheduler(
            self.store,
            config,
            periodic,
            webhooks=self.webhook_sender(),
            dispatcher=dispatcher,
            metrics=self.metrics,
        )

    def sqs_config(self) -> SqsConfig:
        """The sqs transport's configuration, from the settings."""
        return SqsConfig.from_settings(self.settings)

    async def check_broker(self) -> str | None:
        """Raise ``AsyncJobsError`` unless the transport's broker (Redis) answers; returns
        its name, or None when the transport has no broker to check."""
        return await transports.check_broker(self.settings)

    def max_attempts_ceiling(self) -> int:
        """The most attempts a job of a registered type makes by default."""
        own = [h.max_attempts for h in self.registry if h.max_attempts is not None]
        return max([DEFAULT_MAX_ATTEMPTS, *own])

    def webhook_sender(self, config: WebhookConfig | None = None) -> WebhookSender:
        """What sends this app's webhooks (the leading scheduler runs it every round);
        ``config`` defaults to the settings' (secrets, allowed hosts, attempts, timeout)."""
        return WebhookSender(
            self.store,
            config or WebhookConfig.from_settings(self.settings),
            metrics=self.metrics,
            tracing=self.tracing,
        )

    def periodic_runner(
        self,
        jobs: list[PeriodicJob],
        enqueue_tick: EnqueueTick,
        clock: Callable[[], datetime] | None = None,
    ) -> PeriodicRunner:
        """What enqueues the periodic ``jobs`` (the leading scheduler runs it every round);
        ``clock`` for tests that move time."""
        if clock is None:
            return PeriodicRunner(self.store, jobs, enqueue_tick)
        return PeriodicRunner(self.store, jobs, enqueue_tick, clock)

    def scheduler_config(
        self, process_role: str = CHORES_ROLE, process_id: str | None = None
    ) -> SchedulerConfig:
        """``process_role`` and ``process_id`` name this process in the lease row (a worker
        standing for the chores passes ``"worker"`` and its worker id)."""
        return SchedulerConfig(
            interval_seconds=self.settings.scheduler_interval_seconds,
            leader_lease_seconds=self.settings.leader_lease_seconds,
            retention=self.settings.retention,
            holder=leader_holder(process_role, process_id),
        )

    def worker(
        self,
        config: WorkerConfig | None,
        transport: Transport | None,
        on_ready: Callable[[], None] | None,
    ) -> Worker:
        """See ``JobApp.worker``."""
        if not len(self.registry):
            raise ConfigurationError(
                "no job handlers are registered: name their modules with --handlers or "
                "ASYNC_JOBS_HANDLERS"
            )
        config = config or WorkerConfig(
            lease_seconds=self.settings.lease_seconds,
            poll_interval_seconds=self.settings.poll_interval_seconds,
            limits=self.attempt_limits(),
        )
        if transport is None:
            claim = ClaimRequest(
                worker_id=config.worker_id,
                limit=config.concurrency,
                lease_seconds=config.lease_seconds,
                use_cases=config.use_cases,
                types=self.registry.types,
                limits=self.limits,
            )
            side = transports.WorkerSide(
                self.store, self.settings, claim, self.max_attempts_ceiling(), self.metrics
            )
            transport = transports.worker_transport(side)
        return Worker(
            self.registry,
            self.store,
            transport,
            config,
            on_ready=on_ready,
            metrics=self.metrics,
            tracing=self.tracing,
        )

    def attempt_limits(self) -> AttemptLimits:
        return AttemptLimits(self.settings.max_result_bytes, self.settings.max_error_chars)
