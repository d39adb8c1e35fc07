"""Prometheus metrics of one process (``async_jobs_*``), with bounded labels.

One ``Metrics`` per ``JobApp``, on its own ``CollectorRegistry`` (two apps in one process, as
in tests, do not share counts). What changes with every job is a counter or a histogram
updated where the worker already handles the job (finished outcomes are counted per written
batch); what describes the store now (``async_jobs_jobs``, the oldest due job's age) is read
by ``StoreGauges`` at most every few seconds and served from memory to every scrape.

Labels stay bounded: ``type`` is a registered handler's name or ``other``; ``tenant_id``
appears only with ``ASYNC_JOBS_METRICS_TENANT_LABEL=true``, and past ``tenant_cap`` tenants
the rest fold into ``other``; no job id ever.
"""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import logging
import operator
import time
from collections.abc import Callable, Container, Iterable, Iterator, Mapping, Sequence
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.metrics import MetricWrapperBase
from prometheus_client.registry import Collector

from async_jobs.domain.errors import StoreError
from async_jobs.domain.jobs import AttemptOutcome, Job, JobId, OutcomeKind
from async_jobs.domain.scheduling import JobGauges
from async_jobs.ports import JobStore

_KIND: Callable[[Job], tuple[str, str, str]] = operator.attrgetter("use_case", "type", "tenant_id")

log = logging.getLogger("async_jobs.metrics")

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
OTHER = "other"
DEFAULT_TENANT_CAP = 100
GAUGE_REFRESH_SECONDS = 5.0
# Store gauges count at most this many jobs per (state, use case): beyond it the gauge says
# the cap (and the oldest due age is the oldest among the jobs counted).
GAUGE_COUNT_CAP = 10_000
RUN_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900, 3600)
# Labelled series whose handles a process keeps at hand (then forgets all and starts again).
CHILD_CACHE = 1_000
WAIT_BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900, 3600, 21600)

_FINISHED = {
    OutcomeKind.SUCCEEDED: "succeeded",
    OutcomeKind.FAILED: "failed",
    OutcomeKind.CANCELLED: "cancelled",
    OutcomeKind.RETRY: "retried",
}


@dataclasses.dataclass(frozen=True, slots=True)
class MetricsConfig:
    enabled: bool = True
    tenant_label: bool = False
    tenant_cap: int = DEFAULT_TENANT_CAP


class Metrics:
    """The counters, histograms and gauges of the contract in ``docs/observability.md``."""

    def __init__(
        self, config: MetricsConfig | None = None, registry: CollectorRegistry | None = None
    ) -> None:
        self.config = config or MetricsConfig()
        self.registry = registry or CollectorRegistry(auto_describe=True)
        self.enabled = self.config.enabled
        self._types: Container[str] = ()
        self._tenants: set[str] = set()
        self._slots: Callable[[], tuple[int, int]] | None = None
        self._leader: Callable[[], bool] | None = None
        self.gauges: StoreGauges | None = None
        self._children: dict[tuple[MetricWrapperBase, tuple[str, ...]], Any] = {}
        t = ("tenant_id",) if self.config.tenant_label else ()
        r = self.registry
        self.enqueued = Counter(
            "async_jobs_jobs_enqueued", "Jobs stored.", ("use_case", "type", *t), registry=r
        )
        self.started = Counter(
            "async_jobs_jobs_started", "Attempts started.", ("use_case", "type", *t), registry=r
        )
        self.finished = Counter(
            "async_jobs_jobs_finished",
            "Attempts ended, by outcome (retried: the job goes back to pending).",
            ("use_case", "type", "outcome", *t),
            registry=r,
        )
        self.run_seconds = Histogram(
            "async_jobs_job_run_seconds",
            "Time an attempt's handler ran.",
            ("use_case", "type"),
            buckets=RUN_BUCKETS,
            registry=r,
        )
        self.queue_wait = Histogram(
            "async_jobs_job_queue_wait_seconds",
            "From the time a job was due to the start of its attempt (database clock).",
            ("use_case",),
            buckets=WAIT_BUCKETS,
            registry=r,
        )
        self.deadline_missed = Counter(
            "async_jobs_deadline_missed",
            "Attempts started after their deadline.",
            ("use_case",),
            registry=r,
        )
        self.leases_expired = Counter(
            "async_jobs_leases_expired",
            "Jobs handed back by the reaper after their worker's lease ran out.",
            ("use_case",),
            registry=r,
        )
        self.webhooks = Counter(
            "async_jobs_webhook_deliveries", "Webhook delivery attempts.", ("outcome",), registry=r
        )
        self.transport_messages = Counter(
            "async_jobs_transport_messages",
            "Broker messages by event.",
            ("transport", "event"),
            registry=r,
        )
        self.store_errors = Counter(
            "async_jobs_store_errors", "Store operations that failed.", ("operation",), registry=r
        )
        r.register(_LiveGauges(self))

    @classmethod
    def off(cls) -> Metrics:
        """Metrics that count nothing (``/metrics`` still answers, with zero series)."""
        return cls(MetricsConfig(enabled=False))

    # -- what the process tells about itself -----------------------------------------------

    def known_types(self, types: Container[str]) -> None:
        """The registered handlers' names: the only values the ``type`` label takes."""
        self._types = types

    def watch_slots(self, slots: Callable[[], tuple[int, int]]) -> None:
        """``slots()`` -> (busy, free) of this process's worker, read at each scrape."""
        self._slots = slots

    def watch_leader(self, leading: Callable[[], bool]) -> None:
        self._leader = leading

    async def expose(self) -> bytes:
        """The Prometheus text of this process (store gauges refreshed first if stale)."""
        if self.gauges is not None:
            await self.gauges.refresh()
        return generate_latest(self.registry)

    # -- events -----------------------------------------------------------------------------

    def _type(self, job_type: str) -> str:
        return job_type if job_type in self._types else OTHER

    def _child(self, metric: MetricWrapperBase, labels: tuple[str, ...]) -> Any:
        """``metric.labels(*labels)``, remembered: ``labels`` checks and locks on every call,
        which was most of the few microseconds per job the counters cost a worker."""
        child = self._children.get((metric, labels))
        if child is None:
            if len(self._children) >= CHILD_CACHE:  # bounded, whatever the labels seen
                self._children.clear()
            child = self._children[(metric, labels)] = metric.labels(*labels)
        return child

    def _tenant(self, tenant_id: str) -> tuple[str, ...]:
        if not self.config.tenant_label:
            return ()
        if tenant_id in self._tenants:
            return (tenant_id,)
        if len(self._tenants) < self.config.tenant_cap:
            self._tenants.add(tenant_id)
            return (tenant_id,)
        return (OTHER,)

    def jobs_enqueued(self, jobs: Iterable[Job]) -> None:
        if not self.enabled:
            return
        # Counted by the jobs' own fields first (the counting runs in C), then labelled once
        # per distinct kind: a batch is usually one kind, and labelling each job cost a
        # tenth of a batch's client work.
        for (use_case, job_type, tenant), n in collections.Counter(map(_KIND, jobs)).items():
            labels = (use_case, self._type(job_type), *self._tenant(tenant))
            self._child(self.enqueued, labels).inc(n)

    def job_started(self, job: Job) -> None:
        if not self.enabled:
            return
        labels = (job.use_case, self._type(job.type), *self._tenant(job.tenant_id))
        self._child(self.started, labels).inc()
        if job.started_at is not None:
            wait = (job.started_at - job.run_at).total_seconds()
            self._child(self.queue_wait, (job.use_case,)).observe(max(wait, 0.0))
            if job.started_at > job.deadline_at:
                self.deadline_missed.labels(job.use_case).inc()

    def job_ran(self, job: Job, seconds: float) -> None:
        if self.enabled:
            self._child(self.run_seconds, (job.use_case, self._type(job.type))).observe(seconds)

    def outcomes_written(
        self, outcomes: Sequence[AttemptOutcome], jobs: Mapping[JobId, Job]
    ) -> None:
        """A batch of outcomes is in the store: count them (released ones do not count)."""
        if not self.enabled:
            return
        counts: collections.Counter[tuple[str, ...]] = collections.Counter()
        for outcome in outcomes:
            name = _FINISHED.get(outcome.kind)
            job = jobs.get(outcome.job_id)
            if name is None or job is None:
                continue
            counts[(job.use_case, self._type(job.type), name, *self._tenant(job.tenant_id))] += 1
        for labels, n in counts.items():
            self._child(self.finished, labels).inc(n)

    def job_cancelled(self, job: Job) -> None:
        """A pending or queued job was cancelled (no attempt of it will end)."""
        if self.enabled:
            labels = (job.use_case, self._type(job.type), "cancelled", *self._tenant(job.tenant_id))
            self.finished.labels(*labels).inc()

    def leases_reaped(self, jobs: Iterable[Job]) -> None:
        if self.enabled:
            for use_case, n in collections.Counter(j.use_case for j in jobs).items():
                self.leases_expired.labels(use_case).inc(n)

    def webhook_delivery(self, outcome: str) -> None:
        if self.enabled:
            self.webhooks.labels(outcome).inc()

    def transport_event(self, transport: str, event: str, n: int = 1) -> None:
        """The one helper every broker transport calls: ``event`` is ``sent``, ``received``,
        ``duplicate``, ``stale`` or ``invalid``."""
        if self.enabled and n:
            self.transport_messages.labels(transport, event).inc(n)

    def store_error(self, operation: str) -> None:
        if self.enabled:
            self.store_errors.labels(operation).inc()


class _LiveGauges(Collector):
    """Gauges read at scrape time from memory: worker slots, leadership, store gauges."""

    def __init__(self, metrics: Metrics) -> None:
        self._metrics = metrics

    def describe(self) -> Iterable[GaugeMetricFamily]:
        return []

    def collect(self) -> Iterator[GaugeMetricFamily]:
        m = self._metrics
        if m._slots is not None:
            slots = GaugeMetricFamily(
                "async_jobs_worker_slots", "This worker's slots.", labels=("state",)
            )
            busy, free = m._slots()
            slots.add_metric(("busy",), busy)
            slots.add_metric(("free",), free)
            yield slots
        if m._leader is not None:
            yield GaugeMetricFamily(
                "async_jobs_scheduler_leader",
                "1 while this process's scheduler leads.",
                value=1.0 if m._leader() else 0.0,
            )
        snapshot = None if m.gauges is None else m.gauges.latest
        if snapshot is None:
            return
        jobs = GaugeMetricFamily(
            "async_jobs_jobs",
            f"Jobs in the store now by state (pending, queued, running), counted up to "
            f"{GAUGE_COUNT_CAP} per state and use case.",
            labels=("state", "use_case"),
        )
        for (state, use_case), n in sorted(snapshot.counts.items()):
            jobs.add_metric((state, use_case), n)
        yield jobs
        oldest = GaugeMetricFamily(
            "async_jobs_oldest_due_job_age_seconds",
            "Age of the oldest pending job that is due (0: none is).",
            labels=("use_case",),
        )
        for use_case, age in sorted(snapshot.oldest_due_seconds.items()):
            oldest.add_metric((use_case,), age)
        yield oldest


class StoreGauges:
    """Reads ``JobStore.job_gauges`` at most every ``refresh_seconds`` (on demand, from the
    scrape that finds the reading stale), so that any number of scrapers cost one bounded
    query per period."""

    def __init__(
        self,
        store: JobStore,
        refresh_seconds: float = GAUGE_REFRESH_SECONDS,
        cap: int = GAUGE_COUNT_CAP,
        on_error: Callable[[str], None] | None = None,
    ) -> None:
        self._store = store
        self._refresh = refresh_seconds
        self._cap = cap
        self._on_error = on_error
        self._read_at = -float("inf")
        self._lock = asyncio.Lock()
        self.latest: JobGauges | None = None

    async def refresh(self) -> None:
        async with self._lock:
            if time.monotonic() - self._read_at < self._refresh:
                return
            self._read_at = time.monotonic()
            try:
                self.latest = await self._store.job_gauges(self._cap)
            except StoreError as exc:
                log.warning("cannot read the store's gauges: %s", exc)
                if self._on_error is not None:
                    self._on_error("job_gauges")


# A transport's own counter names -> the ``event`` label of async_jobs_transport_messages.
TRANSPORT_EVENTS = {
    "sent": "sent",
    "received": "received",
    "duplicate": "duplicate",
    "stale": "stale",
    "malformed": "invalid",
}


class TransportCounts(collections.Counter[str]):
    """A broker transport's ``counts`` (a ``Counter`` it increments as it goes) that also
    feeds ``async_jobs_transport_messages``: the one place a transport, present or new,
    gets its metrics from (``self.counts = TransportCounts("sqs", metrics)``)."""

    def __init__(self, transport: str, metrics: Metrics | None) -> None:
        self._transport = transport
        self._metrics = metrics or Metrics.off()
        super().__init__()

    def __setitem__(self, key: str, value: int) -> None:
        event = TRANSPORT_EVENTS.get(key)
        if event is not None:
            self._metrics.transport_event(self._transport, event, value - self[key])
        super().__setitem__(key, value)
