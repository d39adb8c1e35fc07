"""A worker's side of the broker transports (sqs, redis): one ``Transport`` over a broker, with
each transport providing only how it reads, keeps, hands back and finishes its messages.

Shared here: the buffer of messages received but not yet claimed, their claim through
``claim_dispatched`` (a message that starts nothing is stale and finished at once), the map of
messages held by running jobs, the demand that the polls read for (the free slots, and for a
transport that ``reads_ahead`` what the worker asks beyond them), the start-up retry while the
broker does not answer, and the stop: polls under way end, what they got and nobody claimed
is handed back at once, pending finishes are awaited.
"""

from __future__ import annotations

import abc
import asyncio
import collections
import contextlib
import logging
from collections.abc import Awaitable, Callable, Coroutine, Iterable, Sequence
from typing import Any, ClassVar, Generic, Protocol, TypeVar

from async_jobs.core.metrics import Metrics, TransportCounts
from async_jobs.domain.dispatch import DispatchTicket, MalformedMessageError, truncated
from async_jobs.domain.errors import AsyncJobsError, StoreError
from async_jobs.domain.jobs import AttemptOutcome, Job, JobId
from async_jobs.domain.retry import Backoff
from async_jobs.ports import JobStore


class Held(Protocol):
    """A message a worker holds; its ticket is None for a malformed one (held to be finished)."""

    ticket: DispatchTicket | None


H = TypeVar("H", bound=Held)
T = TypeVar("T")


class BrokerTransport(abc.ABC, Generic[H]):
    """A worker's ``Transport`` over a broker: reads as many messages as it has free slots
    (plus, if it ``reads_ahead``, what the worker asks beyond them), claims the jobs they
    name, finishes (deletes, acknowledges) each message once its job's outcome is committed
    or once it turns out to start nothing."""

    broker: ClassVar[str]  # its name in log lines ("SQS", "Redis")
    error: ClassVar[type[AsyncJobsError]]  # what a failed broker call raises
    backoff: ClassVar[Backoff]
    log: ClassVar[logging.Logger]
    poll_task: ClassVar[str]  # the name prefix of the poll tasks
    read_failed: ClassVar[str]  # "cannot receive from SQS"
    stale_line: ClassVar[str]  # logged with the number of stale messages
    malformed_line: ClassVar[str]  # logged with the error and the message, truncated
    max_read: ClassVar[int | None] = None  # the most one read may ask for
    # Whether the polls read ``ahead`` messages beyond the free slots when the worker asks
    # for it (its jobs are short): see ``receive``.
    reads_ahead: ClassVar[bool] = False
    count_duplicates: ClassVar[bool] = False  # count a second copy of a held job apart

    def __init__(
        self,
        store: JobStore,
        worker_id: str,
        lease_seconds: float,
        *,
        transport: str,
        metrics: Metrics | None,
    ) -> None:
        self._store = store
        self._worker_id = worker_id
        self._lease_seconds = lease_seconds
        self._buffer: collections.deque[H] = collections.deque()
        self._held: dict[JobId, H] = {}
        self._wanted = 0
        self._ahead = 0
        self._asking = 0
        self._claiming = 0
        self._demand = asyncio.Event()
        self._arrived = asyncio.Event()
        self._woken = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._finishing: set[asyncio.Task[None]] = set()
        self._stop_begun = False
        self.counts: collections.Counter[str] = TransportCounts(transport, metrics)

    # -- what each broker provides --------------------------------------------------------

    @property
    @abc.abstractmethod
    def _poll_grace(self) -> float:
        """How long a stopping worker waits for the reads under way."""

    @abc.abstractmethod
    async def _read(self, source: str, count: int) -> Iterable[Any]:
        """Read up to ``count`` messages of ``source``; raises ``error``."""

    @abc.abstractmethod
    def _decode(self, message: Any) -> str:
        """A message's body (the ticket's text)."""

    def _shown(self, message: Any) -> str:
        """How to show a malformed message in a log line: its body, unless said otherwise."""
        return self._decode(message)

    @abc.abstractmethod
    def _holding(self, source: str, message: Any, ticket: DispatchTicket | None) -> H:
        """What this worker holds of a message it received."""

    @abc.abstractmethod
    async def _release(self, held: Sequence[H]) -> None:
        """Hand messages back: readable by other workers at once."""

    @abc.abstractmethod
    async def _finish(self, held: Sequence[H]) -> None:
        """Delete (acknowledge) messages done with; never raises ``error``."""

    @abc.abstractmethod
    async def _close(self) -> None:
        """Close the broker's client."""

    # -- the Transport --------------------------------------------------------------------

    async def stop(self) -> None:
        # A read cut short on our side may still be answered by the broker, its messages
        # then held for us: let the reads under way end (they stopped asking when the worker
        # began stopping), then hand back what they got.
        self._stop_begun = True
        self._woken.set()
        self._demand.set()
        polls = [t for t in self._tasks if t.get_name().startswith(self.poll_task)]
        for task in self._tasks:
            if task not in polls:
                task.cancel()
        if polls:
            _, late = await asyncio.wait(polls, timeout=self._poll_grace + 5)
            for task in late:
                task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks = []
        unclaimed = list(self._buffer)
        self._buffer.clear()
        if unclaimed:  # received, never started: readable by other workers at once
            await self._release(unclaimed)
        if self._finishing:
            await asyncio.wait(self._finishing, timeout=10)
        await self._close()

    def wake(self) -> None:
        self._woken.set()  # the worker is stopping: no new reads
        self._arrived.set()
        self._demand.set()

    def nudge(self, *, requeued: bool) -> None:
        return None  # slots are filled by the scheduler's dispatch, not by this worker

    @property
    def asking(self) -> int:
        """Messages asked for by the reads under way."""
        return self._asking

    @property
    def stopping(self) -> bool:
        """``stop`` has begun."""
        return self._stop_begun

    def forget(self, job_id: JobId) -> None:
        held = self._held.pop(job_id, None)
        if held is not None:
            self._finish_later([held])

    async def receive(self, capacity: int, wait_seconds: float, ahead: int = 0) -> list[Job]:
        """Claims what the buffer holds, up to ``capacity``; waits for the polls' reads when
        it is empty. With ``reads_ahead``, the polls keep reading until the buffer holds
        ``ahead`` messages beyond the demand: the next call claims at once, and the read of
        the next batch overlaps the claim of this one. Those messages stay pending under
        this worker (kept fresh like the others, handed back on stop); one whose job was
        cancelled or dispatched again meanwhile is stale at its claim and runs nothing."""
        self._wanted = capacity
        self._ahead = ahead if self.reads_ahead else 0
        self._demand.set()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + wait_seconds
        while True:
            if self._buffer:
                taken = [self._buffer.popleft() for _ in range(min(capacity, len(self._buffer)))]
                jobs = await self._claim(taken)
                if jobs:
                    self._wanted = max(0, capacity - len(jobs))
                    return jobs
                continue
            remaining = deadline - loop.time()
            if self._woken.is_set() or remaining <= 0:
                return []
            self._arrived.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._arrived.wait(), remaining)

    async def settle(self, outcomes: Sequence[AttemptOutcome]) -> list[JobId]:
        written = await self._store.record_outcomes(outcomes)
        done = [h for o in outcomes if (h := self._held.pop(o.job_id, None)) is not None]
        self._finish_later(done)
        return written

    # -- inside ---------------------------------------------------------------------------

    async def _until_answered(self, attempt: Callable[[], Awaitable[T]]) -> T | None:
        """``attempt`` again, with backoff, while the broker does not answer; None once the
        worker is stopped first."""
        failures = 0
        while True:
            try:
                return await attempt()
            except self.error as exc:
                failures += 1
                await self._back_off(failures, f"{self.broker} does not answer", exc)
                if self._woken.is_set():
                    return None

    async def _back_off(self, failures: int, failed: str, exc: AsyncJobsError) -> None:
        """Log a failed call, then wait its backoff (cut short when the worker stops)."""
        delay = self.backoff.delay(failures)
        self.log.warning("%s (retry in %.1fs): %s", failed, delay, exc)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._woken.wait(), delay)

    def _start_polls(
        self, sources: Iterable[str], keep: Coroutine[Any, Any, None], keep_name: str
    ) -> None:
        """One poll task per source, and the task that keeps the held messages ours."""
        self._tasks = [
            asyncio.create_task(self._poll(s), name=f"{self.poll_task}{s}") for s in sources
        ]
        self._tasks.append(asyncio.create_task(keep, name=keep_name))

    async def _claim(self, taken: list[H]) -> list[Job]:
        """Start the jobs the messages name; finish the messages that start nothing."""
        self._claiming = len(taken)
        try:
            jobs = await self._store.claim_dispatched(
                [h.ticket for h in taken if h.ticket is not None],
                self._worker_id,
                self._lease_seconds,
            )
        except StoreError:
            self._buffer.extendleft(reversed(taken))  # still held for us; claimed next time
            raise
        finally:
            self._claiming = 0
            self._demand.set()  # what the polls should read has changed
        started = {job.id for job in jobs}
        stale = []
        for held in taken:
            job_id = held.ticket.job_id if held.ticket is not None else None
            if job_id is not None and job_id in started and job_id not in self._held:
                self._held[job_id] = held
            else:
                if self.count_duplicates and job_id is not None and job_id in self._held:
                    self.counts["duplicate"] += 1  # also stale: a second copy of a held job
                stale.append(held)
        self.counts["claimed"] += len(jobs)
        if stale:
            self.counts["stale"] += len(stale)
            self.log.info(self.stale_line, len(stale))
            self._finish_later(stale)
        return jobs

    async def _poll(self, source: str) -> None:
        failures = 0
        while not self._woken.is_set():
            count = self._shortfall()
            if self.max_read is not None:
                count = min(self.max_read, count)
            if count <= 0:
                self._demand.clear()
                await self._demand.wait()
                continue
            self._asking += count
            try:
                messages = await self._read(source, count)
            except self.error as exc:
                failures += 1
                await self._back_off(failures, self.read_failed, exc)
                continue
            finally:
                self._asking -= count
            failures = 0
            self._accept(source, messages)

    def _shortfall(self) -> int:
        """Messages to ask for now: reading ahead, the demand and ``ahead`` beyond it, less
        what is buffered, being claimed and asked for already. Otherwise the demand less
        what is buffered and asked for, as the sqs transport has always read: the messages
        being claimed are not counted, so a read during a claim may bring the next batch."""
        if not self._ahead:
            return self._wanted - len(self._buffer) - self._asking
        held = len(self._buffer) + self._claiming + self._asking
        return self._wanted + self._ahead - held

    def _accept(self, source: str, messages: Iterable[Any]) -> None:
        malformed = []
        received = 0
        for message in messages:
            received += 1
            try:
                ticket = DispatchTicket.from_message(self._decode(message))
            except MalformedMessageError as exc:
                self.log.warning(self.malformed_line, exc, truncated(self._shown(message)))
                malformed.append(self._holding(source, message, None))
                continue
            self._buffer.append(self._holding(source, message, ticket))
        self.counts["received"] += received
        if malformed:
            self.counts["malformed"] += len(malformed)
            self._finish_later(malformed)
        self._arrived.set()

    def _finish_later(self, held: Sequence[H]) -> None:
        if not held:
            return
        task = asyncio.create_task(self._finish(held))
        self._finishing.add(task)
        task.add_done_callback(self._finishing.discard)


def by(items: Iterable[Any], key: Any) -> dict[Any, list[Any]]:
    """``items`` grouped by ``key``, in order of first appearance."""
    groups: dict[Any, list[Any]] = {}
    for item in items:
        groups.setdefault(key(item), []).append(item)
    return groups
