"""The scheduler's side of the sqs transport: ``SqsDispatcher`` sends the tickets of due jobs
to their use case's queue (the outbox and the window are ``transports.dispatch``'s)."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

from async_jobs.domain.dispatch import DispatchTicket
from async_jobs.transports.dispatch import ConfiguredDispatcher
from async_jobs.transports.sqs.client import BACKOFF, BATCH, SqsClient, SqsConfig, SqsError, log


class SqsDispatcher(ConfiguredDispatcher[SqsConfig]):
    """Run by the leading scheduler: sends due jobs to their use case's queue, at most the
    dispatch window of each use case unclaimed at once (``transports.dispatch``)."""

    broker = "SQS"
    error = SqsError
    backoff = BACKOFF
    log = log
    transport = "sqs"

    def _use_cases_of(self, config: SqsConfig) -> Sequence[str]:
        return tuple(config.queues)

    def _configured(self) -> None:
        self._client = SqsClient(self.config)
        self._opened = False

    async def _open(self) -> None:
        if not self._opened:
            await self._client.open()
            self._opened = True

    async def close(self) -> None:
        await self._client.close()
        self._opened = False

    async def _send(self, use_case: str, tickets: Sequence[DispatchTicket]) -> int:
        """Send the tickets, 10 per call, every call at once; jobs whose send failed go back
        to pending at once. Raises ``SqsError`` (after that) if a call failed outright."""
        url = self.config.queues[use_case]
        calls = [(url, tickets[i : i + BATCH]) for i in range(0, len(tickets), BATCH)]
        answers = await asyncio.gather(
            *(self._client.send(url, [t.to_message() for t in chunk]) for url, chunk in calls),
            return_exceptions=True,
        )
        unsent: list[DispatchTicket] = []
        error: BaseException | None = None
        for (_, chunk), answer in zip(calls, answers, strict=True):
            if isinstance(answer, BaseException):
                error = answer
                unsent.extend(chunk)
            else:
                unsent.extend(chunk[i] for i in answer)
        return await self._sent(tickets, unsent, error)
