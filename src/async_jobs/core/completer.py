"""The worker's outcome writer: outcomes of many attempts written in few statements."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Sequence

from async_jobs.core.metrics import Metrics
from async_jobs.domain.errors import StoreError
from async_jobs.domain.jobs import AttemptOutcome
from async_jobs.domain.retry import Backoff
from async_jobs.ports import Transport

log = logging.getLogger("async_jobs.worker")

RECONNECT_BACKOFF = Backoff.exponential(0.2, cap_seconds=15.0, jitter=0.5)


class Completer:
    """Collects outcomes and writes them in batches, one batch in flight at a time; a batch
    that could not be written is kept and written again (the fence makes that safe)."""

    def __init__(
        self,
        transport: Transport,
        on_written: Callable[[Sequence[AttemptOutcome]], None],
        max_batch: int,
        linger_seconds: float,
        metrics: Metrics | None = None,
    ) -> None:
        self._metrics = metrics or Metrics.off()
        self._transport = transport
        self._on_written = on_written
        self._max_batch = max_batch
        self._linger = linger_seconds
        self._pending: list[AttemptOutcome] = []
        self._wake = asyncio.Event()
        self._retry_now = asyncio.Event()
        self._idle = asyncio.Event()
        self._idle.set()

    def add(self, outcome: AttemptOutcome) -> None:
        self._pending.append(outcome)
        self._idle.clear()
        self._wake.set()

    @property
    def idle(self) -> bool:
        return self._idle.is_set()

    async def wait_idle(self) -> None:
        await self._idle.wait()

    def nudge(self) -> None:
        """The store answered someone else: cut short the wait before the next write."""
        self._retry_now.set()

    async def run(self) -> None:
        failures = 0
        while True:
            await self._wake.wait()
            if len(self._pending) < self._max_batch // 4 and self._linger > 0:
                await asyncio.sleep(self._linger)  # one statement for many outcomes
            self._wake.clear()
            while self._pending:
                batch = self._pending[: self._max_batch]
                del self._pending[: self._max_batch]
                try:
                    await self._transport.settle(batch)
                except StoreError as exc:
                    self._pending[:0] = batch
                    failures += 1
                    self._metrics.store_error("record_outcomes")
                    log.warning("cannot record %d outcomes yet: %s", len(batch), exc)
                    self._retry_now.clear()
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(
                            self._retry_now.wait(), RECONNECT_BACKOFF.delay(failures)
                        )
                    continue
                failures = 0
                self._on_written(batch)
            self._idle.set()
