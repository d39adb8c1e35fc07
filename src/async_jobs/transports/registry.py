"""The one place a transport is chosen: its name (``ASYNC_JOBS_TRANSPORT``) -> how to build a
worker's ``Transport`` and the leading scheduler's ``Dispatcher`` for it.

Adding a transport is one entry in ``TRANSPORTS`` (its name also listed in
``core.settings.TRANSPORTS``, which validates the setting); ``JobApp`` and the CLI ask this
registry and never name a transport themselves.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Awaitable, Callable, Mapping, Sequence

from async_jobs.core.metrics import Metrics
from async_jobs.core.settings import Settings
from async_jobs.domain.errors import ConfigurationError
from async_jobs.domain.jobs import ClaimRequest
from async_jobs.domain.scheduling import Limits
from async_jobs.ports import Dispatcher, JobStore, Transport


@dataclasses.dataclass(frozen=True, slots=True)
class WorkerSide:
    """What a worker's transport is built from."""

    store: JobStore
    settings: Settings
    claim: ClaimRequest  # the direct claim: whose lease, which jobs, how many at most
    max_attempts: int  # the most attempts a registered job type makes by default
    metrics: Metrics | None = None  # a broker transport counts its messages there

    @property
    def worker_id(self) -> str:
        return self.claim.worker_id

    @property
    def lease_seconds(self) -> float:
        return self.claim.lease_seconds

    @property
    def use_cases(self) -> Sequence[str]:
        return self.claim.use_cases


@dataclasses.dataclass(frozen=True, slots=True)
class SchedulerSide:
    """What the leading scheduler's dispatcher is built from."""

    store: JobStore
    settings: Settings
    limits: Limits
    holder: str
    metrics: Metrics | None = None

    def broker_dispatcher(self, make: Callable[..., Dispatcher], config: object) -> Dispatcher:
        """A broker transport's dispatcher, each built as ``make(store, config, limits,
        holder, window=..., metrics=...)``."""
        return make(
            self.store,
            config,
            self.limits,
            self.holder,
            window=self.settings.dispatch_window,
            metrics=self.metrics,
        )


@dataclasses.dataclass(frozen=True, slots=True)
class TransportEntry:
    worker: Callable[[WorkerSide], Transport]
    # None: workers claim from the store themselves; the scheduler dispatches nothing.
    dispatcher: Callable[[SchedulerSide], Dispatcher] | None = None
    # The broker's name in /health and a check that it answers (raises AsyncJobsError).
    broker: str | None = None
    ping: Callable[[Settings], Awaitable[None]] | None = None


def _direct_worker(side: WorkerSide) -> Transport:
    from async_jobs.transports.direct import DirectTransport

    return DirectTransport(side.store, side.claim)


def _sqs_worker(side: WorkerSide) -> Transport:
    from async_jobs.transports.sqs import SqsConfig, SqsTransport

    return SqsTransport(
        side.store,
        SqsConfig.from_settings(side.settings),
        side.worker_id,
        side.lease_seconds,
        side.use_cases,
        side.max_attempts,
        metrics=side.metrics,
    )


def _sqs_dispatcher(side: SchedulerSide) -> Dispatcher:
    from async_jobs.transports.sqs import SqsConfig, SqsDispatcher

    return side.broker_dispatcher(SqsDispatcher, SqsConfig.from_settings(side.settings))


def _redis_worker(side: WorkerSide) -> Transport:
    from async_jobs.transports.redis import RedisConfig, RedisTransport

    return RedisTransport(
        side.store,
        RedisConfig.from_settings(side.settings),
        side.worker_id,
        side.lease_seconds,
        side.use_cases,
        metrics=side.metrics,
    )


def _redis_dispatcher(side: SchedulerSide) -> Dispatcher:
    from async_jobs.transports.redis import RedisConfig, RedisDispatcher

    return side.broker_dispatcher(RedisDispatcher, RedisConfig.from_settings(side.settings))


async def _sqs_ping(settings: Settings) -> None:
    """Every configured queue answers (its depth is asked)."""
    from async_jobs.transports.sqs import SqsClient, SqsConfig

    config = SqsConfig.from_settings(settings)
    client = SqsClient(config)
    await client.open()
    try:
        for url in sorted(set(config.queues.values())):
            await client.depth(url)
    finally:
        await client.close()


async def _redis_ping(settings: Settings) -> None:
    from async_jobs.transports.redis import RedisConfig, ping

    await ping(RedisConfig.from_settings(settings))


TRANSPORTS: Mapping[str, TransportEntry] = {
    "direct": TransportEntry(_direct_worker),
    "sqs": TransportEntry(_sqs_worker, _sqs_dispatcher, "sqs", _sqs_ping),
    "redis": TransportEntry(_redis_worker, _redis_dispatcher, "redis", _redis_ping),
}


def entry(name: str) -> TransportEntry:
    try:
        return TRANSPORTS[name]
    except KeyError:
        raise ConfigurationError(
            f"unknown transport {name!r}: one of {', '.join(sorted(TRANSPORTS))}"
        ) from None


def worker_transport(side: WorkerSide) -> Transport:
    """The worker's transport for ``side.settings.transport``."""
    return entry(side.settings.transport).worker(side)


def dispatcher(side: SchedulerSide) -> Dispatcher | None:
    """The leading scheduler's dispatcher for ``side.settings.transport`` (None: none)."""
    make = entry(side.settings.transport).dispatcher
    return None if make is None else make(side)


async def check_broker(settings: Settings) -> str | None:
    """Raise ``AsyncJobsError`` unless the transport's broker answers; returns its name
    (None: the transport has no broker to check)."""
    found = entry(settings.transport)
    if found.ping is None:
        return None
    await found.ping(settings)
    return found.broker
