"""The worker's side of the sqs transport: ``SqsTransport`` long-polls its queues, keeps the
messages it holds invisible while their jobs run, deletes them once the outcome is stored
and releases the unclaimed ones on stop (the buffer, the claim and the stop are
``transports.broker``'s)."""

from __future__ import annotations

import asyncio
import dataclasses
import random
from collections.abc import Sequence
from typing import Any

from async_jobs.core.metrics import Metrics
from async_jobs.domain.dispatch import DispatchTicket
from async_jobs.ports import JobStore
from async_jobs.transports.broker import BrokerTransport, by
from async_jobs.transports.sqs.admin import check_redrive
from async_jobs.transports.sqs.client import BACKOFF, BATCH, SqsClient, SqsConfig, SqsError, log

POLL_TASK = "async-jobs-sqs-poll:"


@dataclasses.dataclass(slots=True)
class Received:
    """A message this worker holds: invisible to others until deleted or released."""

    queue_url: str
    receipt_handle: str
    ticket: DispatchTicket | None  # None: a malformed message, held only to be deleted


class SqsTransport(BrokerTransport[Received]):
    """A worker's ``Transport`` over SQS (see the module's docstring; the buffer, the claim
    and the stop are ``transports.broker``'s)."""

    broker = "SQS"
    error = SqsError
    backoff = BACKOFF
    log = log
    poll_task = POLL_TASK
    read_failed = "cannot receive from SQS"
    stale_line = "%d messages named no job queued for them; deleted"
    malformed_line = "deleting a malformed message (%s): %s"
    max_read = BATCH
    count_duplicates = True

    def __init__(
        self,
        store: JobStore,
        config: SqsConfig,
        worker_id: str,
        lease_seconds: float,
        use_cases: Sequence[str] = (),
        max_attempts: int = 1,
        metrics: Metrics | None = None,
    ) -> None:
        super().__init__(store, worker_id, lease_seconds, transport="sqs", metrics=metrics)
        self.config = config
        self._urls = sorted({config.queue_of(u) for u in use_cases or config.queues})
        self._max_attempts = max_attempts
        self._client = SqsClient(config)
        self._visibility = 30

    async def start(self) -> None:
        """Open the client and check every queue (its redrive policy, its visibility
        timeout); while SQS does not answer, retry with backoff until it does or the
        worker is stopped. A misconfigured queue refuses the start (``ConfigurationError``)."""
        await self._client.open()
        try:
            timeouts = await self._check_queues()
        except BaseException:
            await self._client.close()
            raise
        if not timeouts:
            return  # stopped before SQS answered
        self._visibility = self.config.visibility_timeout_seconds or max(2, min(timeouts))
        self._start_polls(self._urls, self._keep_invisible(), "async-jobs-sqs-keep")

    async def _check_queues(self) -> list[int]:
        async def check() -> list[int]:
            return [await check_redrive(self._client, u, self._max_attempts) for u in self._urls]

        return await self._until_answered(check) or []

    @property
    def _poll_grace(self) -> float:
        return self.config.long_poll_seconds

    async def _close(self) -> None:
        await self._client.close()

    async def _read(self, source: str, count: int) -> list[Any]:
        return await self._client.receive(source, count, self.config.long_poll_seconds)

    def _decode(self, message: Any) -> str:
        return str(message.get("Body", ""))

    def _holding(self, source: str, message: Any, ticket: DispatchTicket | None) -> Received:
        return Received(source, message["ReceiptHandle"], ticket)

    async def _keep_invisible(self) -> None:
        """Extend the visibility of every message held (buffered or running) well before it
        runs out, alongside the leases of the jobs."""
        interval = max(1.0, self._visibility / 3)
        while True:
            await asyncio.sleep(interval * random.uniform(0.9, 1.0))
            held = list(self._buffer) + list(self._held.values())
            for url, group in by(held, lambda r: r.queue_url).items():
                for chunk in _chunks(group):
                    try:
                        failed = await self._client.set_visibility(
                            url, [r.receipt_handle for r in chunk], self._visibility
                        )
                    except SqsError as exc:
                        log.warning(
                            "cannot extend the visibility of %d messages: %s", len(chunk), exc
                        )
                        continue
                    for handle, code in failed:
                        self._drop_handle(handle, code)

    def _drop_handle(self, handle: str, code: str) -> None:
        """SQS no longer knows this receipt (it expired, the message went elsewhere): the
        store still decides who runs the job; only our hold on the message is gone."""
        self.counts["invalid_receipt"] += 1
        log.warning("SQS refused a receipt handle (%s); the message is no longer held", code)
        for received in list(self._buffer):
            if received.receipt_handle == handle:
                self._buffer.remove(received)
        for job_id, received in list(self._held.items()):
            if received.receipt_handle == handle:
                del self._held[job_id]

    async def _release(self, messages: Sequence[Received]) -> None:
        for url, group in by(messages, lambda r: r.queue_url).items():
            for chunk in _chunks(group):
                try:
                    await self._client.set_visibility(url, [r.receipt_handle for r in chunk], 0)
                    self.counts["released"] += len(chunk)
                except SqsError as exc:
                    log.warning("cannot release %d messages: %s", len(chunk), exc)

    async def _finish(self, messages: Sequence[Received]) -> None:
        """Delete messages, 10 per call."""
        for url, group in by(messages, lambda r: r.queue_url).items():
            for chunk in _chunks(group):
                try:
                    codes = await self._client.delete(url, [r.receipt_handle for r in chunk])
                except SqsError as exc:  # it comes back after its visibility; stale then
                    log.warning("cannot delete %d messages: %s", len(chunk), exc)
                    continue
                self.counts["deleted"] += len(chunk) - len(codes)
                for code in codes:
                    self.counts["invalid_receipt"] += 1
                    log.warning("SQS did not delete a message: %s", code)


def _chunks(items: Sequence[Received]) -> list[Sequence[Received]]:
    return [items[i : i + BATCH] for i in range(0, len(items), BATCH)]
