"""The broker dispatchers' window (``transports.dispatch``) on every store, with a broker that
only records what it is sent: per use case, at most the window queued at once, running jobs
not counted, a cap below the window winning, and one use case's backlog starving no other.
The real brokers (SQS, Redis) are in test_sqs_transport.py and test_redis_transport.py."""

from __future__ import annotations

import collections
import logging
from collections.abc import Sequence

import pytest

from async_jobs.domain.dispatch import DispatchTicket
from async_jobs.domain.errors import AsyncJobsError
from async_jobs.domain.retry import Backoff
from async_jobs.domain.scheduling import Limits
from async_jobs.ports import JobStore
from async_jobs.transports.dispatch import BrokerDispatcher
from tests.helpers import new_job


class BrokerDown(AsyncJobsError):
    code = "broker_unavailable"


class Recording(BrokerDispatcher):
    broker = "the recording broker"
    error = BrokerDown
    backoff = Backoff.constant(0, jitter=0)
    log = logging.getLogger("tests.dispatch_window")

    def __init__(self, store: JobStore, use_cases: Sequence[str], limits: Limits, window: int):
        super().__init__(
            store,
            use_cases,
            limits,
            holder="scheduler",
            batch=20,
            window=window,
            dispatch_timeout_seconds=60.0,
            transport="recording",
        )
        self.sent: list[tuple[str, DispatchTicket]] = []  # (use case, ticket)
        self.down = False

    async def _open(self) -> None:
        return None

    async def close(self) -> None:
        return None

    async def _send(self, use_case: str, tickets: Sequence[DispatchTicket]) -> int:
        if self.down:
            return await self._sent(tickets, tickets, BrokerDown("down"))
        self.sent.extend((use_case, ticket) for ticket in tickets)
        return await self._sent(tickets, [], None)

    def per_use_case(self) -> dict[str, int]:
        return dict(collections.Counter(use_case for use_case, _ in self.sent))


async def test_each_use_case_fills_its_own_window_and_a_lower_cap_wins(store: JobStore) -> None:
    await store.insert_jobs([new_job(use_case="bulk") for _ in range(300)])
    await store.insert_jobs([new_job(use_case="mail") for _ in range(5)])
    await store.insert_jobs([new_job(use_case="capped") for _ in range(30)])
    limits = Limits(max_concurrent={"capped": 10})
    dispatcher = Recording(store, ("bulk", "mail", "capped"), limits, window=50)

    assert await dispatcher.run_once() == 65
    assert dispatcher.per_use_case() == {"bulk": 50, "mail": 5, "capped": 10}
    assert await store.count_queued(["bulk", "mail", "capped"], 1000) == {
        "bulk": 50,
        "mail": 5,
        "capped": 10,
    }
    assert await dispatcher.run_once() == 0  # every window (or cap) is full

    # Workers claim 30 bulk jobs: running jobs do not count, so 30 more bulk go out.
    bulk = [ticket for use_case, ticket in dispatcher.sent if use_case == "bulk"][:30]
    assert len(await store.claim_dispatched(bulk, "w1", 30)) == 30
    dispatcher.sent.clear()
    assert await dispatcher.run_once() == 30
    assert dispatcher.per_use_case() == {"bulk": 30}
    assert await store.count_queued(["bulk"], 1000) == {"bulk": 50}


async def test_a_failed_send_puts_its_jobs_back_and_frees_the_window(store: JobStore) -> None:
    await store.insert_jobs([new_job() for _ in range(30)])
    dispatcher = Recording(store, ("default",), Limits(), window=10)
    dispatcher.down = True
    assert await dispatcher.run_once() == 0
    assert dispatcher.counts["send_failed"] == 10
    assert await store.count_queued(["default"], 100) == {"default": 0}
    dispatcher.down = False
    assert await dispatcher.run_once() == 10
    assert await store.count_queued(["default"], 100) == {"default": 10}


async def test_the_queued_count_is_read_again_only_when_the_window_may_be_full(
    store: JobStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    counts: list[int] = []
    count_queued = store.count_queued

    async def counting(use_cases: Sequence[str], cap: int) -> dict[str, int]:
        counts.append(cap)
        return await count_queued(use_cases, cap)

    monkeypatch.setattr(store, "count_queued", counting)
    dispatcher = Recording(store, ("default",), Limits(), window=50)
    await store.insert_jobs([new_job()])
    assert await dispatcher.run_once() == 1
    first = len(counts)
    assert first >= 1  # a dispatcher counts before its first round

    # An idle use case's next job goes out with its dispatch statement alone.
    await store.insert_jobs([new_job()])
    assert await dispatcher.run_once() == 1
    assert len(counts) == first

    # The bound (what it sent since the last count) reaches the window: it counts again and
    # still never queues more than the window.
    await store.insert_jobs([new_job() for _ in range(100)])
    assert await dispatcher.run_once() == 48
    assert await dispatcher.run_once() == 0
    assert len(counts) > first
    assert await store.count_queued(["default"], 1000) == {"default": 50}
