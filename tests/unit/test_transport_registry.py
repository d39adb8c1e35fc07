"""The transport registry: the one place a transport name becomes a worker transport and a
scheduler dispatcher."""

from __future__ import annotations

import pytest

from async_jobs.core.settings import TRANSPORTS as SETTING_NAMES
from async_jobs.core.settings import Settings
from async_jobs.domain.errors import ConfigurationError
from async_jobs.domain.jobs import ClaimRequest
from async_jobs.domain.scheduling import Limits
from async_jobs.stores.memory import MemoryStore
from async_jobs.transports import registry
from async_jobs.transports.direct import DirectTransport
from async_jobs.transports.sqs import SqsDispatcher, SqsTransport


def sides(settings: Settings) -> tuple[registry.WorkerSide, registry.SchedulerSide]:
    store = MemoryStore()
    claim = ClaimRequest(worker_id="w1", limit=4, lease_seconds=30.0)
    return (
        registry.WorkerSide(store, settings, claim, max_attempts=3),
        registry.SchedulerSide(store, settings, Limits(), holder="s1"),
    )


def test_every_transport_the_settings_accept_has_one_entry() -> None:
    assert set(registry.TRANSPORTS) == set(SETTING_NAMES)


def test_direct_has_no_dispatcher_and_claims_from_the_store() -> None:
    worker, scheduler = sides(Settings())
    assert isinstance(registry.worker_transport(worker), DirectTransport)
    assert registry.dispatcher(scheduler) is None


def test_sqs_builds_its_transport_and_dispatcher_from_the_settings() -> None:
    settings = Settings(transport="sqs", sqs_queues={"default": "http://q/default"})
    worker, scheduler = sides(settings)
    transport = registry.worker_transport(worker)
    assert isinstance(transport, SqsTransport)
    made = registry.dispatcher(scheduler)
    assert isinstance(made, SqsDispatcher)
    assert made.config.queues == {"default": "http://q/default"}


def test_an_unknown_name_is_refused() -> None:
    with pytest.raises(ConfigurationError, match="unknown transport 'carrier-pigeon'"):
        registry.entry("carrier-pigeon")
