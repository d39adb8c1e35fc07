"""The sqs transport's client: its configuration (``SqsConfig``), one aiobotocore client
with the calls the transport makes (``SqsClient``), every failure as ``SqsError``."""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import logging
import urllib.parse
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from async_jobs.core.settings import Settings
from async_jobs.domain.errors import AsyncJobsError, ConfigurationError
from async_jobs.domain.retry import Backoff

if TYPE_CHECKING:
    from types_aiobotocore_sqs import SQSClient

log = logging.getLogger("async_jobs.sqs")

BATCH = 10  # SQS takes and gives at most 10 messages per call
BACKOFF = Backoff.exponential(0.5, cap_seconds=20.0, jitter=0.5)
DEFAULT_REGION = "us-east-1"


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
        if self.endpoint_url is not None and not _is_http_url(self.endpoint_url):
            raise ConfigurationError(
                "ASYNC_JOBS_SQS_ENDPOINT_URL must be an http:// or https:// URL with a host, "
                f"not {self.endpoint_url!r}"
            )
        for use_case, url in sorted(self.queues.items()):
            if not _is_http_url(url):
                raise ConfigurationError(
                    f"ASYNC_JOBS_SQS_QUEUE_{use_case.upper()} must be the queue's URL "
                    f"(https://sqs.<region>.amazonaws.com/<account>/<name>), not {url!r}"
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


def _is_http_url(url: str) -> bool:
    try:
        parts = urllib.parse.urlsplit(url)
        parts.port  # noqa: B018 - raises ValueError for a port that is not a number
    except ValueError:
        return False
    return parts.scheme in ("http", "https") and bool(parts.hostname)


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
        async with translated(f"send to {queue_url}"):
            answer = await self.client.send_message_batch(QueueUrl=queue_url, Entries=entries)  # type: ignore[arg-type]
        self._count("send", len(entries))
        failed = answer.get("Failed", [])
        for entry in failed:
            log.warning("SQS refused a message for %s: %s", queue_url, entry.get("Message"))
        return [int(entry["Id"]) for entry in failed]

    async def receive(self, queue_url: str, count: int, wait_seconds: int) -> list[Any]:
        visibility = self.config.visibility_timeout_seconds
        extra = {} if visibility is None else {"VisibilityTimeout": visibility}
        async with translated(f"receive from {queue_url}"):
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
        async with translated(f"delete from {queue_url}"):
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
        async with translated(f"change visibility in {queue_url}"):
            answer = await self.client.change_message_visibility_batch(
                QueueUrl=queue_url,
                Entries=entries,  # type: ignore[arg-type]
            )
        return [(handles[int(e["Id"])], e.get("Code", "")) for e in answer.get("Failed", [])]

    async def attributes(self, queue_url: str) -> dict[str, str]:
        async with translated(f"read the attributes of {queue_url}"):
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
async def translated(doing: str) -> Any:
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
