"""The sqs transport: the leading scheduler dispatches jobs to one SQS queue per use case,
workers on any number of machines receive them.

The store stays the truth; a message only carries a ``DispatchTicket`` ("job X, attempt N,
under dispatch D"). The flow, each step guarded:

1. ``SqsDispatcher`` (in the leading scheduler) moves due jobs within every limit from
   ``pending`` to ``queued`` under a fresh dispatch id and a deadline (the outbox), then
   sends their tickets in batches of 10. A failed send puts its jobs back to ``pending`` at
   once; a send lost without an error is caught by the deadline: a job nobody claimed by
   then goes back to ``pending`` and is sent again.
2. ``SqsTransport`` (in a worker) long-polls its queues, only for as many messages as it has
   free slots, and claims the named jobs in one statement (``queued`` -> ``running``) only
   while each is still queued under that dispatch and attempt. A message for anything else
   (a duplicate delivery, a late or forged message, a cancelled job) is deleted and counted;
   a malformed one is logged (truncated), deleted and counted. This side is
   ``transports.broker``'s (``BrokerTransport``, shared with the redis transport); this module
   gives it the polls, the visibility, the release and the deletes.
3. While a job runs, its message stays in flight: its visibility is extended alongside the
   lease, and it is deleted once the job's outcome is committed. On SIGTERM, messages
   received but not yet claimed are made visible again at once.

Only dispatched jobs are in a queue, and at most the dispatch window of each use case
(``ASYNC_JOBS_DISPATCH_WINDOW``, fewer if its cap is lower) at once, so the broker stays
shallow whatever the backlog in the store (``transports.dispatch``).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import dataclasses
import json
import logging
import random
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from async_jobs.core.metrics import Metrics
from async_jobs.core.settings import DEFAULT_DISPATCH_WINDOW, Settings
from async_jobs.domain.dispatch import DispatchTicket
from async_jobs.domain.errors import AsyncJobsError, ConfigurationError
from async_jobs.domain.jobs import Job
from async_jobs.domain.retry import Backoff
from async_jobs.domain.scheduling import Limits
from async_jobs.ports import JobStore
from async_jobs.transports.broker import BrokerTransport, by
from async_jobs.transports.dispatch import BrokerDispatcher

if TYPE_CHECKING:
    from types_aiobotocore_sqs import SQSClient

log = logging.getLogger("async_jobs.sqs")

BATCH = 10  # SQS takes and gives at most 10 messages per call
BACKOFF = Backoff.exponential(0.5, cap_seconds=20.0, jitter=0.5)
DEFAULT_REGION = "us-east-1"
POLL_TASK = "async-jobs-sqs-poll:"


class SqsError(AsyncJobsError):
    """SQS did not answer, or answered with an error."""

    code = "broker_unavailable"
    http_status = 503


@dataclasses.dataclass(frozen=True, slots=True)
class SqsConfig:
    """Where the queues are and how to talk to them. Times are in seconds."""

    queues: Mapping[str, str]  # use case -> queue URL
    endpoint_url: str | None = None
    region: str = DEFAULT_REGION
    # A dispatched job nobody claimed within this long goes back to pending (sent again).
    dispatch_timeout_seconds: float = 60.0
    long_poll_seconds: int = 10
    # HTTP connections to SQS: long polls hold one each, so sends and deletes need more.
    max_connections: int = 50
    # How long a received message stays invisible before it is extended (None: the queue's
    # own VisibilityTimeout); also what `sqs create-queues` gives new queues.
    visibility_timeout_seconds: int | None = None

    def __post_init__(self) -> None:
        if not self.queues:
            raise ConfigurationError(
                "the sqs transport needs a queue per use case: set "
                "ASYNC_JOBS_SQS_QUEUE_<USE_CASE>=<queue url> (e.g. ASYNC_JOBS_SQS_QUEUE_DEFAULT)"
            )
        if not 0 <= self.long_poll_seconds <= 20:
            raise ConfigurationError("the SQS long poll lasts 0 to 20 seconds")
        if self.dispatch_timeout_seconds <= 0 or self.max_connections < 2:
            raise ConfigurationError("SQS dispatch timeout and connections must be positive")
        if self.visibility_timeout_seconds is not None and not (
            2 <= self.visibility_timeout_seconds <= 43200
        ):
            raise ConfigurationError("the SQS visibility timeout is 2 to 43200 seconds")

    @classmethod
    def from_settings(cls, s: Settings) -> SqsConfig:
        """The sqs transport's configuration, from the settings."""
        return cls(
            queues=dict(s.sqs_queues),
            endpoint_url=s.sqs_endpoint_url,
            region=s.sqs_region,
            dispatch_timeout_seconds=s.sqs_dispatch_timeout_seconds,
            max_connections=s.sqs_max_connections,
            long_poll_seconds=s.sqs_long_poll_seconds,
            visibility_timeout_seconds=s.sqs_visibility_timeout_seconds,
        )

    def queue_of(self, use_case: str) -> str:
        try:
            return self.queues[use_case]
        except KeyError:
            raise ConfigurationError(
                f"no SQS queue is configured for use case {use_case!r}: set "
                f"ASYNC_JOBS_SQS_QUEUE_{use_case.upper()}"
            ) from None


@dataclasses.dataclass(slots=True)
class Received:
    """A message this worker holds: invisible to others until deleted or released."""

    queue_url: str
    receipt_handle: str
    ticket: DispatchTicket | None  # None: a malformed message, held only to be deleted


class SqsClient:
    """One aiobotocore client (one session, pooled connections) with the calls we make;
    every failure becomes ``SqsError``."""

    def __init__(self, config: SqsConfig) -> None:
        self.config = config
        self._stack: contextlib.AsyncExitStack | None = None
        self._client: SQSClient | None = None
        # Calls made and messages they carried, by operation (send, receive, delete, ...).
        self.calls: collections.Counter[str] = collections.Counter()
        self.messages: collections.Counter[str] = collections.Counter()

    async def open(self) -> None:
        try:
            from aiobotocore.config import AioConfig
            from aiobotocore.session import get_session
        except ImportError as exc:  # pragma: no cover - depends on the installation
            raise ConfigurationError(
                "the sqs transport needs aiobotocore: pip install 'async-job-server[sqs]'"
            ) from exc
        stack = contextlib.AsyncExitStack()
        session = get_session()
        aio_config = AioConfig(
            max_pool_connections=self.config.max_connections,
            connect_timeout=5,
            read_timeout=self.config.long_poll_seconds + 15,
            retries={"max_attempts": 1, "mode": "standard"},  # we retry, with our backoff
            parameter_validation=False,  # our calls are well-formed; it costs CPU per call
        )
        self._client = await stack.enter_async_context(
            session.create_client(
                "sqs",
                region_name=self.config.region,
                endpoint_url=self.config.endpoint_url,
                config=aio_config,
            )
        )
        self._stack = stack

    async def close(self) -> None:
        stack, self._stack, self._client = self._stack, None, None
        if stack is not None:
            await stack.aclose()
        if self.calls:
            log.info("SQS calls (messages per call): %s", self.summary())

    def summary(self) -> str:
        return ", ".join(
            f"{op} {n} ({self.messages[op] / n:.1f})" for op, n in sorted(self.calls.items())
        )

    def _count(self, op: str, messages: int) -> None:
        self.calls[op] += 1
        self.messages[op] += messages

    @property
    def client(self) -> SQSClient:
        if self._client is None:
            raise SqsError("the SQS client is not open")
        return self._client

    async def send(self, queue_url: str, bodies: Sequence[str]) -> list[int]:
        """Send up to 10 bodies in one call; returns the indexes SQS did not take."""
        entries = [{"Id": str(i), "MessageBody": body} for i, body in enumerate(bodies)]
        async with _translated(f"send to {queue_url}"):
            answer = await self.client.send_message_batch(QueueUrl=queue_url, Entries=entries)  # type: ignore[arg-type]
        self._count("send", len(entries))
        failed = answer.get("Failed", [])
        for entry in failed:
            log.warning("SQS refused a message for %s: %s", queue_url, entry.get("Message"))
        return [int(entry["Id"]) for entry in failed]

    async def receive(self, queue_url: str, count: int, wait_seconds: int) -> list[Any]:
        visibility = self.config.visibility_timeout_seconds
        extra = {} if visibility is None else {"VisibilityTimeout": visibility}
        async with _translated(f"receive from {queue_url}"):
            answer = await self.client.receive_message(
                QueueUrl=queue_url,
                MaxNumberOfMessages=max(1, min(BATCH, count)),
                WaitTimeSeconds=wait_seconds,
                **extra,  # type: ignore[arg-type]
            )
        messages = list(answer.get("Messages", []))
        self._count("receive", len(messages))
        return messages

    async def delete(self, queue_url: str, handles: Sequence[str]) -> list[str]:
        """Delete up to 10 messages; returns the error codes of those SQS did not delete."""
        entries = [{"Id": str(i), "ReceiptHandle": h} for i, h in enumerate(handles)]
        async with _translated(f"delete from {queue_url}"):
            answer = await self.client.delete_message_batch(QueueUrl=queue_url, Entries=entries)  # type: ignore[arg-type]
        self._count("delete", len(entries))
        return [entry.get("Code", "") for entry in answer.get("Failed", [])]

    async def set_visibility(
        self, queue_url: str, handles: Sequence[str], seconds: int
    ) -> list[tuple[str, str]]:
        """Change the visibility of up to 10 messages; returns (handle, error code) of each
        that SQS did not change (``ReceiptHandleIsInvalid``: it is no longer ours)."""
        entries = [
            {"Id": str(i), "ReceiptHandle": h, "VisibilityTimeout": seconds}
            for i, h in enumerate(handles)
        ]
        async with _translated(f"change visibility in {queue_url}"):
            answer = await self.client.change_message_visibility_batch(
                QueueUrl=queue_url,
                Entries=entries,  # type: ignore[arg-type]
            )
        return [(handles[int(e["Id"])], e.get("Code", "")) for e in answer.get("Failed", [])]

    async def attributes(self, queue_url: str) -> dict[str, str]:
        async with _translated(f"read the attributes of {queue_url}"):
            answer = await self.client.get_queue_attributes(
                QueueUrl=queue_url, AttributeNames=["All"]
            )
        return {str(key): value for key, value in answer.get("Attributes", {}).items()}

    async def depth(self, queue_url: str) -> tuple[int, int]:
        """Messages (visible, in flight) in a queue, as SQS approximates them."""
        attributes = await self.attributes(queue_url)
        return (
            int(attributes.get("ApproximateNumberOfMessages", 0)),
            int(attributes.get("ApproximateNumberOfMessagesNotVisible", 0)),
        )


@contextlib.asynccontextmanager
async def _translated(doing: str) -> Any:
    from botocore.exceptions import BotoCoreError, ClientError

    try:
        yield
    except ClientError as exc:
        error = exc.response.get("Error", {})
        raise SqsError(
            f"SQS refused to {doing}: {error.get('Code')}: {error.get('Message')}",
            sqs_code=error.get("Code"),
        ) from exc
    except (BotoCoreError, OSError, TimeoutError) as exc:
        raise SqsError(f"cannot {doing}: {exc}") from exc
    except Exception as exc:  # aiohttp's errors, which botocore does not always wrap
        if type(exc).__module__.startswith("aiohttp"):
            raise SqsError(f"cannot {doing}: {exc}") from exc
        raise


async def check_redrive(client: SqsClient, queue_url: str, max_attempts: int) -> int:
    """Refuse a queue whose dead-letter queue would take a message before its job's attempts
    are spent (``maxReceiveCount`` must exceed the largest ``max_attempts``). Returns the
    queue's visibility timeout (seconds)."""
    attributes = await client.attributes(queue_url)
    policy = attributes.get("RedrivePolicy")
    if policy:
        try:
            receives = int(json.loads(policy)["maxReceiveCount"])
        except (ValueError, KeyError, TypeError) as exc:
            raise ConfigurationError(
                f"SQS queue {queue_url} has a redrive policy we cannot read: {policy!r}"
            ) from exc
        if receives <= max_attempts:
            raise ConfigurationError(
                f"SQS queue {queue_url} moves a message to its dead-letter queue after "
                f"{receives} receives, but jobs may make up to {max_attempts} attempts: set "
                f"its maxReceiveCount to at least {max_attempts + 1} (the job's own `failed` "
                "state is the dead letter of this server)"
            )
    return int(attributes.get("VisibilityTimeout", 30))


async def create_queues(config: SqsConfig, max_attempts: int) -> list[dict[str, str]]:
    """Create each configured queue with a dead-letter queue (``<name>-dlq``) whose
    ``maxReceiveCount`` exceeds ``max_attempts`` (local development; idempotent)."""
    client = SqsClient(config)
    await client.open()
    made = []
    try:
        for use_case, url in sorted(config.queues.items()):
            name = url.rstrip("/").rsplit("/", 1)[-1]
            async with _translated(f"create the queues of {use_case}"):
                dlq = await client.client.create_queue(QueueName=f"{name}-dlq")
                arn = await client.client.get_queue_attributes(
                    QueueUrl=dlq["QueueUrl"], AttributeNames=["QueueArn"]
                )
                redrive = json.dumps(
                    {
                        "deadLetterTargetArn": arn["Attributes"]["QueueArn"],
                        "maxReceiveCount": str(max(10, max_attempts + 1)),
                    }
                )
                queue = await client.client.create_queue(QueueName=name)
                await client.client.set_queue_attributes(
                    QueueUrl=queue["QueueUrl"],
                    Attributes={
                        "RedrivePolicy": redrive,
                        "VisibilityTimeout": str(config.visibility_timeout_seconds or 30),
                    },
                )
            made.append(
                {
                    "use_case": use_case,
                    "queue_url": queue["QueueUrl"],
                    "configured_url": url,
                    "dead_letter_queue_url": dlq["QueueUrl"],
                }
            )
    finally:
        await client.close()
    return made


# -- the scheduler's side -------------------------------------------------------------------


class SqsDispatcher(BrokerDispatcher):
    """Run by the leading scheduler: sends due jobs to their use case's queue, at most the
    dispatch window of each use case unclaimed at once (``transports.dispatch``)."""

    broker = "SQS"
    error = SqsError
    backoff = BACKOFF
    log = log

    def __init__(
        self,
        store: JobStore,
        config: SqsConfig,
        limits: Limits,
        holder: str = "scheduler",
        batch: int = 100,
        window: int = DEFAULT_DISPATCH_WINDOW,
        metrics: Metrics | None = None,
    ) -> None:
        super().__init__(
            store,
            tuple(config.queues),
            limits,
            holder=holder,
            batch=batch,
            window=window,
            dispatch_timeout_seconds=config.dispatch_timeout_seconds,
            transport="sqs",
            metrics=metrics,
        )
        self.config = config
        self._client = SqsClient(config)
        self._opened = False

    async def _open(self) -> None:
        if not self._opened:
            await self._client.open()
            self._opened = True

    async def close(self) -> None:
        await self._client.close()
        self._opened = False

    async def _send(self, jobs: Sequence[Job]) -> int:
        """Send the tickets, 10 per call, every call at once; jobs whose send failed go back
        to pending at once. Raises ``SqsError`` (after that) if a call failed outright."""
        calls: list[tuple[str, list[DispatchTicket]]] = []
        for use_case, group in by(jobs, lambda j: j.use_case).items():
            url = self.config.queues[use_case]
            tickets = [DispatchTicket.of(job) for job in group]
            calls.extend((url, tickets[i : i + BATCH]) for i in range(0, len(tickets), BATCH))
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
        return await self._sent(jobs, unsent, error)


# -- the worker's side ----------------------------------------------------------------------


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

    def _decode(self, message: Any) -> tuple[str, str]:
        body = message.get("Body", "")
        return body, body

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
