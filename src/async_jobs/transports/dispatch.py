"""The leading scheduler's side of the broker transports (sqs, redis): one dispatch loop, with
each transport providing only how it opens its client and sends tickets.

A round (``run_once``):

1. every second or so, dispatches that lapsed unclaimed go back to ``pending``;
2. one cheap read counts the jobs ``queued`` per use case (dispatched, not yet claimed),
   each count stopping at the window ``W`` (``ASYNC_JOBS_DISPATCH_WINDOW``);
3. for each use case in turn, due jobs move ``pending`` -> ``queued`` in batches, within
   every limit of the claim (caps, quotas, pauses) and never more than ``W - queued``, and
   their tickets are sent. A use case's backlog can therefore fill only its own window, and
   every other use case gets its turn in the same round.

The window bounds what waits in the broker, not what runs: running jobs do not count, so an
uncapped use case with a backlog of 100,000 due jobs keeps ``W`` messages out and sends more
as workers claim them, instead of sending all 100,000 (most of which would lapse and be sent
again). A capped use case is bounded by whichever of its cap and the window is smaller.
"""

from __future__ import annotations

import abc
import asyncio
import collections
import logging
import math
from collections.abc import Sequence
from typing import ClassVar, Generic, Protocol, TypeVar

from async_jobs.core.metrics import Metrics, TransportCounts
from async_jobs.core.settings import DEFAULT_DISPATCH_WINDOW
from async_jobs.domain.dispatch import DispatchTicket
from async_jobs.domain.errors import AsyncJobsError
from async_jobs.domain.jobs import ClaimRequest
from async_jobs.domain.retry import Backoff
from async_jobs.domain.scheduling import Limits
from async_jobs.ports import JobStore

LAPSED_CHECK_SECONDS = 1.0  # how often a dispatcher looks for lapsed dispatches
LAPSED_PER_ROUND = 1000
# The queued jobs are counted again before a round when the last count is this old.
RECOUNT_BEFORE_SECONDS = 3 * LAPSED_CHECK_SECONDS


class BrokerDispatcher(abc.ABC):
    """Run by the leading scheduler: dispatches due jobs of ``use_cases`` to a broker,
    keeping at most ``window`` of each use case queued (see the module's docstring)."""

    broker: ClassVar[str]  # its name in log lines ("SQS", "Redis")
    error: ClassVar[type[AsyncJobsError]]  # what a failed send raises
    backoff: ClassVar[Backoff]  # the wait after failed sends before the next round sends
    log: ClassVar[logging.Logger]

    def __init__(
        self,
        store: JobStore,
        use_cases: Sequence[str],
        limits: Limits,
        *,
        holder: str,
        batch: int,
        window: int,
        dispatch_timeout_seconds: float,
        transport: str,
        metrics: Metrics | None = None,
    ) -> None:
        self._store = store
        self._use_cases = tuple(use_cases)
        self._limits = limits
        self._holder = holder
        self._batch = batch
        self._window = window
        self._dispatch_timeout = dispatch_timeout_seconds
        self._failures = 0
        self._resume_at = 0.0
        self._lapsed_checked_at = -math.inf
        self._queued: collections.Counter[str] = collections.Counter()
        self._counted_at = -math.inf
        # sent, send_failed, lapsed: jobs, by event (also async_jobs_transport_messages).
        self.counts: collections.Counter[str] = TransportCounts(transport, metrics)

    @property
    def window(self) -> int:
        return self._window

    @abc.abstractmethod
    async def _open(self) -> None:
        """Make the broker's client ready (called every round: cheap once open)."""

    @abc.abstractmethod
    async def _send(self, use_case: str, tickets: Sequence[DispatchTicket]) -> int:
        """Send the tickets of dispatched jobs of ``use_case``; pass what was not sent to
        ``_sent``, and return what it returns."""

    @abc.abstractmethod
    async def close(self) -> None: ...

    async def run_once(self) -> int:
        """Fill every use case's window; then, about every second, send back lapsed
        dispatches (and fill again) and count the queued jobs afresh. Returns how many jobs
        were sent; after a failed send, sends nothing until the backoff has passed."""
        loop = asyncio.get_running_loop()
        if loop.time() < self._resume_at:
            return 0
        await self._open()
        # ``_queued`` bounds each use case's queued jobs from above: only the leader adds
        # to them, workers' claims and lapses take away. It is counted (one cheap read)
        # before a fill only when it would hold a batch back or is old (this dispatcher did
        # not lead for a while); else after the fill, about every second. A job enqueued
        # into an idle system thus waits for one statement (its dispatch), not three.
        if loop.time() - self._counted_at >= RECOUNT_BEFORE_SECONDS or any(
            self._window - self._queued[u] < self._batch for u in self._use_cases
        ):
            await self._count()
        sent = await self._fill()
        if loop.time() < self._resume_at:
            return sent
        # Deadlines are seconds apart: looking for lapsed ones on every round (every batch
        # of finished jobs, under load) would only cost a query each time.
        every = min(LAPSED_CHECK_SECONDS, self._dispatch_timeout / 2)
        if loop.time() - self._lapsed_checked_at >= every:
            self._lapsed_checked_at = loop.time()
            lapsed = await self._store.requeue_dispatched(LAPSED_PER_ROUND)
            await self._count()
            if lapsed:
                self.counts["lapsed"] += len(lapsed)
                self.log.warning("%d dispatches lapsed unclaimed; they are sent again", len(lapsed))
                sent += await self._fill()
        return sent

    async def _count(self) -> None:
        self._counted_at = asyncio.get_running_loop().time()
        self._queued = collections.Counter(
            await self._store.count_queued(self._use_cases, self._window)
        )

    async def _fill(self) -> int:
        loop = asyncio.get_running_loop()
        sent = 0
        for use_case in self._use_cases:
            room = self._window - self._queued[use_case]
            while room > 0:
                limit = min(self._batch, room)
                tickets = await self._store.dispatch_jobs(self._request(use_case, limit))
                if not tickets:
                    break
                try:
                    out = await self._send(use_case, tickets)
                except self.error as exc:
                    self._failures += 1
                    delay = self.backoff.delay(self._failures)
                    self._resume_at = loop.time() + delay
                    self._counted_at = -math.inf  # what went out is unknown: count again
                    self.log.warning(
                        "cannot dispatch to %s (retry in %.1fs): %s", self.broker, delay, exc
                    )
                    return sent
                self._failures = 0
                sent += out
                self._queued[use_case] += out
                room -= len(tickets)  # refused sends went back to pending: next round's
                if len(tickets) < limit:
                    break
        return sent

    def _request(self, use_case: str, limit: int) -> ClaimRequest:
        return ClaimRequest(
            worker_id=self._holder,
            limit=limit,
            lease_seconds=self._dispatch_timeout,
            use_cases=(use_case,),
            limits=self._limits,
            dispatch=True,
        )

    async def _sent(
        self,
        tickets: Sequence[DispatchTicket],
        unsent: Sequence[DispatchTicket],
        error: BaseException | None,
    ) -> int:
        """After a send: jobs whose tickets did not go out go back to pending at once; then
        raise ``error`` (as the broker's error) if a call failed outright. Returns how many
        were sent."""
        if unsent:
            back = await self._store.requeue_dispatched(0, unsent)
            self.counts["send_failed"] += len(back)
        self.counts["sent"] += len(tickets) - len(unsent)
        if error is not None:
            if isinstance(error, self.error):
                raise error
            raise self.error(f"cannot send to {self.broker}: {error}")
        return len(tickets) - len(unsent)


class DispatchConfig(Protocol):
    """What a broker transport's configuration tells its dispatcher."""

    @property
    def dispatch_timeout_seconds(self) -> float: ...


C = TypeVar("C", bound=DispatchConfig)


class ConfiguredDispatcher(BrokerDispatcher, Generic[C]):
    """A broker transport's dispatcher, built from that transport's configuration ``C``: its
    use cases (``_use_cases_of``) and dispatch timeout; ``_configured`` completes it."""

    transport: ClassVar[str]  # the transport's name in the metrics ("sqs", "redis")
    default_batch: ClassVar[int] = 100  # jobs per dispatch statement unless told otherwise

    def __init__(
        self,
        store: JobStore,
        config: C,
        limits: Limits,
        holder: str = "scheduler",
        batch: int | None = None,
        window: int = DEFAULT_DISPATCH_WINDOW,
        metrics: Metrics | None = None,
    ) -> None:
        super().__init__(
            store,
            self._use_cases_of(config),
            limits,
            holder=holder,
            batch=self.default_batch if batch is None else batch,
            window=window,
            dispatch_timeout_seconds=config.dispatch_timeout_seconds,
            transport=self.transport,
            metrics=metrics,
        )
        self.config = config
        self._configured()

    @abc.abstractmethod
    def _use_cases_of(self, config: C) -> Sequence[str]:
        """The use cases the configuration gives a queue or stream."""

    def _configured(self) -> None:
        """The transport's own set-up, once ``self.config`` is set (its client, unopened)."""
