"""The worker's outcome writer: outcomes of many attempts written in few statements."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
from collections.abc import Callable, Sequence

from async_jobs.core.metrics import Metrics
from async_jobs.domain.errors import StoreError, StoreRefusedError
from async_jobs.domain.jobs import ERROR_MESSAGE_LIMIT, AttemptOutcome, JobError, OutcomeKind
from async_jobs.domain.retry import Backoff
from async_jobs.domain.validation import storable_text
from async_jobs.ports import Transport

log = logging.getLogger("async_jobs.worker")

RECONNECT_BACKOFF = Backoff.exponential(0.2, cap_seconds=15.0, jitter=0.5)


def _refused(exc: Exception) -> bool:
    """Whether writing the same outcomes again would fail again: the store refused a value
    of them (``StoreRefusedError``), or they made code of ours fail. Any other store error
    (an outage, a standby that takes no writes after a failover, one we cannot tell) keeps
    the outcomes for a later write."""
    return isinstance(exc, StoreRefusedError) or not isinstance(exc, StoreError)


class Completer:
    """Collects outcomes and writes them in batches, one batch in flight at a time.

    A batch the store cannot take now (an outage, or any store error but a refusal) is kept
    and written again after a backoff (the fence makes that safe). A batch it refuses
    (``StoreRefusedError``) is written in halves, down to the outcomes it refuses alone, so
    that one of them holds back no other; each of those is replaced by a failure that says
    why, or given up (``on_given_up``) if even that is refused.
    """

    def __init__(
        self,
        transport: Transport,
        on_written: Callable[[Sequence[AttemptOutcome]], None],
        max_batch: int,
        linger_seconds: float,
        metrics: Metrics | None = None,
        on_given_up: Callable[[AttemptOutcome], None] = lambda outcome: None,
    ) -> None:
        self._metrics = metrics or Metrics.off()
        self._transport = transport
        self._on_written = on_written
        self._on_given_up = on_given_up
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
                    await self._write(batch)
                except StoreError as exc:  # not refused (_write handles those): try again later
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
            self._idle.set()

    async def _write(self, batch: list[AttemptOutcome]) -> None:
        """Write ``batch``, in halves where the store refuses it. On an outage, what is not
        written yet goes back to the front of the queue and the error is raised."""
        parts = [batch]  # not written yet, the next one last
        try:
            while parts:
                part = parts[-1]
                try:
                    await self._transport.settle(part)
                except Exception as exc:
                    if not _refused(exc):
                        raise
                    self._metrics.store_error("record_outcomes")
                    if len(part) > 1:
                        half = len(part) // 2
                        parts[-1:] = (part[half:], part[:half])
                    else:
                        await self._write_refused(part[0], exc)
                        parts.pop()
                    continue
                parts.pop()
                self._on_written(part)
        except StoreError:
            self._pending[:0] = [outcome for part in reversed(parts) for outcome in part]
            raise

    async def _write_refused(self, outcome: AttemptOutcome, refusal: Exception) -> None:
        """The store refuses ``outcome`` even alone: write in its place the same end of the
        attempt without its result and with an error saying why (a success becomes a
        failure: its result is what could not be stored). If that is refused too, give the
        job up: its lease runs out and the reaper counts the attempt."""
        why = _why_refused(refusal)
        log.error(
            "the store refused the outcome of job %s (%s); recording a failure instead",
            outcome.job_id,
            why,
            exc_info=not isinstance(refusal, StoreError),
        )
        stand_in = _stand_in(outcome, why)
        try:
            await self._transport.settle([stand_in])
        except Exception as exc:
            if not _refused(exc):
                raise
            self._metrics.store_error("record_outcomes")
            log.exception(
                "the store refused a failure in place of job %s's outcome too; the job is"
                " given up, its lease will run out",
                outcome.job_id,
            )
            self._on_given_up(outcome)
            return
        self._on_written([stand_in])


def _why_refused(refusal: BaseException) -> str:
    """The innermost cause of a refused write, which names the problem (a driver's own
    message may hold every value it was given)."""
    cause = refusal
    while cause.__cause__ is not None:
        cause = cause.__cause__
    return storable_text(f"{type(cause).__name__}: {cause}")


def _stand_in(outcome: AttemptOutcome, why: str) -> AttemptOutcome:
    """``outcome`` without its result and with an error saying why it was not stored."""
    message = f"the store refused this attempt's outcome ({outcome.kind.value}): {why}"
    kind = OutcomeKind.FAILED if outcome.kind is OutcomeKind.SUCCEEDED else outcome.kind
    return dataclasses.replace(
        outcome,
        kind=kind,
        result=None,
        result_json=None,
        error=JobError("OutcomeNotStored", message[:ERROR_MESSAGE_LIMIT]),
    )
