"""The redis transport: the leading scheduler dispatches jobs to one Redis stream per use case
(one consumer group each), workers on any number of machines read them.

The store stays the truth; an entry only carries a ``DispatchTicket`` ("job X, attempt N,
under dispatch D"), as an SQS message does for the sqs transport. The flow, each step guarded:

1. ``RedisDispatcher`` (in the leading scheduler) moves due jobs within every limit from
   ``pending`` to ``queued`` under a fresh dispatch id and a deadline (the outbox), then adds
   their tickets to the streams (``XADD`` with an approximate ``MAXLEN``), one script call
   per stream and batch (atomic: a worker blocked in ``XREADGROUP`` gets the whole batch).
   A failed add puts its jobs back to ``pending`` at once; an entry lost without an error
   (Redis restarted without persistence, ``FLUSHALL``, trimmed) is caught by the deadline:
   a job nobody claimed by then goes back to ``pending`` and is dispatched again.
   At most the dispatch window of each use case (``ASYNC_JOBS_DISPATCH_WINDOW``) is queued
   at once (``transports.dispatch``, shared with the sqs transport).
2. ``RedisTransport`` (in a worker) reads its streams with ``XREADGROUP`` (blocking, as many
   entries as it has free slots and, while the worker's jobs are short, as many again as it
   claims ahead: see ``BrokerTransport.receive``) and claims the named jobs in one statement
   (``queued`` -> ``running``) only while each is still queued under that dispatch and
   attempt. An entry
   for anything else (a duplicate, a late or forged entry, a cancelled job) is acknowledged,
   deleted and counted; a malformed one is logged (truncated), acknowledged, deleted, counted.
   This side is ``transports.broker``'s (``BrokerTransport``, shared with the sqs transport);
   this module gives it the reads, the keeping, the hand-back and the acknowledgement.
3. While a job runs, its entry stays pending under this worker's consumer; it is kept fresh
   (``XCLAIM ... JUSTID`` resets its idle time) alongside the lease, and acknowledged and
   deleted (``XACK`` + ``XDEL``) once the job's outcome is committed. Entries of a consumer
   that died are taken over with ``XAUTOCLAIM`` once idle longer than the lease. On SIGTERM,
   entries received but not yet claimed are handed back at once (added again, the old ones
   acknowledged).

Every key of a use case shares the hash tag ``{prefix:use_case}``, and every command names
one key, so the transport runs on Redis Cluster (``redis+cluster://`` or
``rediss+cluster://`` URLs) as on one server. A group missing (``NOGROUP``: Redis emptied or
restarted) is created again, reading the stream from its start.

Counting points (``counts`` of the dispatcher and of the transport, by event): ``sent``,
``send_failed``, ``lapsed`` (dispatcher); ``received``, ``claimed``, ``stale``,
``malformed``, ``acked``, ``released``, ``autoclaimed``, ``group_created`` (transport).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import random
import time
from collections.abc import Mapping, Sequence
from typing import Any

from async_jobs.core.metrics import Metrics
from async_jobs.core.settings import Settings
from async_jobs.domain.dispatch import DispatchTicket
from async_jobs.domain.errors import AsyncJobsError, ConfigurationError
from async_jobs.domain.retry import Backoff
from async_jobs.ports import JobStore
from async_jobs.transports.broker import BrokerTransport, by
from async_jobs.transports.dispatch import ConfiguredDispatcher

log = logging.getLogger("async_jobs.redis")

BACKOFF = Backoff.exponential(0.2, cap_seconds=10.0, jitter=0.5)
CLUSTER_SCHEMES = {"redis+cluster": "redis", "rediss+cluster": "rediss"}
FIELD = "t"  # the one field of an entry: the ticket
GROUP = "async-jobs"
POLL_TASK = "async-jobs-redis-poll:"
# Adds entries to one stream (KEYS[1]): ARGV = max length, field, the tickets. A script is
# atomic and names one key, so it runs on Redis Cluster as on one server; redis-py loads it
# again where Redis lost it (restarted, SCRIPT FLUSH).
ADD_SCRIPT = """
for i = 3, #ARGV do
    redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[1], '*', ARGV[2], ARGV[i])
end
return #ARGV - 2
"""
# Acknowledges and deletes entries of one stream (KEYS[1]): ARGV[1] the group, ARGV[2] the
# entry ids, space-separated. One argument for all the ids: the client encodes two
# arguments instead of two per entry. Like a pipeline that does not raise, an error of one
# command (the group gone) does not stop the other. Returns the entries acknowledged.
ACK_SCRIPT = """
local ids = {}
for id in string.gmatch(ARGV[2], '%S+') do ids[#ids + 1] = id end
local acked = 0
for i = 1, #ids, 500 do
    local chunk = {unpack(ids, i, math.min(i + 499, #ids))}
    local n = redis.pcall('XACK', KEYS[1], ARGV[1], unpack(chunk))
    if type(n) == 'number' then acked = acked + n end
    redis.pcall('XDEL', KEYS[1], unpack(chunk))
end
return acked
"""
INSTALL_HINT = "the redis transport needs redis-py: pip install 'async-job-server[redis]'"


class RedisError(AsyncJobsError):
    """Redis did not answer, or answered with an error."""

    code = "broker_unavailable"
    http_status = 503


@dataclasses.dataclass(frozen=True, slots=True)
class RedisConfig:
    """Where Redis is and how the streams are named. Times are in seconds."""

    url: str
    prefix: str = "async-jobs"
    use_cases: tuple[str, ...] = ("default",)
    # A dispatched job nobody claimed within this long goes back to pending (sent again).
    dispatch_timeout_seconds: float = 60.0
    # How long a read blocks: also how long a stopping worker may wait for its reads.
    block_seconds: float = 2.0
    max_len: int = 100_000  # approximate MAXLEN of each stream (entries not yet deleted)

    def __post_init__(self) -> None:
        scheme = self.url.split("://", 1)[0].lower()
        if scheme not in ("redis", "rediss", "unix", *CLUSTER_SCHEMES):
            raise ConfigurationError(
                "ASYNC_JOBS_REDIS_URL must be a redis://, rediss://, unix://, "
                f"redis+cluster:// or rediss+cluster:// URL, not {self.url.split('://')[0]!r}://"
            )
        if not self.use_cases:
            raise ConfigurationError("the redis transport needs at least one use case")
        if not self.prefix or any(c in self.prefix for c in "{}"):
            raise ConfigurationError("ASYNC_JOBS_REDIS_PREFIX must be non-empty, without { }")
        if self.dispatch_timeout_seconds <= 0 or self.block_seconds <= 0 or self.max_len < 1:
            raise ConfigurationError("Redis dispatch timeout, block and max length must be > 0")

    @classmethod
    def from_settings(cls, s: Settings) -> RedisConfig:
        if not s.redis_url:
            raise ConfigurationError(
                "the redis transport needs ASYNC_JOBS_REDIS_URL (e.g. redis://localhost:6379/0)"
            )
        return cls(
            url=s.redis_url,
            prefix=s.redis_prefix,
            use_cases=tuple(s.redis_use_cases),
            dispatch_timeout_seconds=s.redis_dispatch_timeout_seconds,
        )

    @property
    def cluster(self) -> bool:
        return self.url.split("://", 1)[0].lower() in CLUSTER_SCHEMES

    def stream_of(self, use_case: str) -> str:
        """The stream of a use case; its hash tag keeps a use case's keys on one slot."""
        if use_case not in self.use_cases:
            raise ConfigurationError(
                f"use case {use_case!r} has no Redis stream: add it to ASYNC_JOBS_REDIS_USE_CASES"
            )
        return f"{{{self.prefix}:{use_case}}}:jobs"


def require_redis() -> None:
    """Fail at start, with the install hint, where redis-py is missing."""
    try:
        import redis.asyncio  # noqa: F401
    except ImportError as exc:
        raise ConfigurationError(INSTALL_HINT) from exc


def connect(config: RedisConfig) -> Any:
    """A redis-py asyncio client (a cluster client for ``redis+cluster://`` URLs); it
    connects lazily, and again after a connection is lost."""
    require_redis()
    from redis.asyncio import Redis
    from redis.asyncio.cluster import RedisCluster

    options: dict[str, Any] = {"decode_responses": True, "socket_connect_timeout": 5.0}
    if config.cluster:
        scheme, rest = config.url.split("://", 1)
        return RedisCluster.from_url(f"{CLUSTER_SCHEMES[scheme.lower()]}://{rest}", **options)
    return Redis.from_url(config.url, **options)


@contextlib.asynccontextmanager
async def _translated(doing: str) -> Any:
    from redis.exceptions import RedisError as ClientError

    try:
        yield
    except ClientError as exc:
        raise RedisError(f"cannot {doing}: {type(exc).__name__}: {exc}") from exc
    except (OSError, TimeoutError) as exc:
        raise RedisError(f"cannot {doing}: {exc}") from exc


def _no_group(exc: BaseException) -> bool:
    return "NOGROUP" in str(exc)


async def ensure_group(client: Any, stream: str) -> bool:
    """Create the stream's consumer group (and the stream) unless it exists; reading starts
    at the stream's beginning, so entries added before the group are not missed. Returns
    True when it was created."""
    from redis.exceptions import ResponseError

    try:
        await client.xgroup_create(stream, GROUP, id="0", mkstream=True)
    except ResponseError as exc:
        if "BUSYGROUP" in str(exc):
            return False
        raise
    return True


async def ping(config: RedisConfig) -> None:
    """Raise ``RedisError`` unless Redis answers."""
    client = connect(config)
    try:
        async with _translated("reach Redis"):
            await client.ping()
    finally:
        await client.aclose()


async def info(config: RedisConfig) -> list[dict[str, Any]]:
    """Per use case: the stream's length, entries pending per consumer, the oldest entry's
    age (seconds; None when the stream is empty)."""
    client = connect(config)
    now_ms = time.time() * 1000
    rows = []
    try:
        for use_case in config.use_cases:
            stream = config.stream_of(use_case)
            async with _translated(f"read stream {stream}"):
                length = await client.xlen(stream)
                first = await client.xrange(stream, "-", "+", count=1)
                try:
                    pending = await client.xpending(stream, GROUP)
                except Exception as exc:  # no group yet: nothing pending
                    if not _no_group(exc):
                        raise
                    pending = {"pending": 0, "consumers": []}
            oldest = None
            if first:
                oldest = round(max(0.0, now_ms - int(first[0][0].split("-")[0])) / 1000, 3)
            rows.append(
                {
                    "use_case": use_case,
                    "stream": stream,
                    "length": int(length),
                    "pending": int(pending.get("pending") or 0),
                    "pending_per_consumer": {
                        str(c["name"]): int(c["pending"]) for c in pending.get("consumers") or []
                    },
                    "oldest_entry_age_seconds": oldest,
                }
            )
    finally:
        await client.aclose()
    return rows


# -- the scheduler's side -------------------------------------------------------------------


class RedisDispatcher(ConfiguredDispatcher[RedisConfig]):
    """Run by the leading scheduler: adds due jobs to their use case's stream, at most the
    dispatch window of each use case unclaimed at once (``transports.dispatch``)."""

    broker = "Redis"
    error = RedisError
    backoff = BACKOFF
    log = log
    transport = "redis"
    # Up to 500 jobs per dispatch statement (and one script call): in batches of 100 the
    # dispatch claim could not keep one worker's stream fed (docs/redis.md, Speed).
    default_batch = 500

    def _use_cases_of(self, config: RedisConfig) -> Sequence[str]:
        return config.use_cases

    def _configured(self) -> None:
        require_redis()
        self._client: Any = None
        self._add_script: Any = None

    async def _open(self) -> None:
        if self._client is None:
            self._client = connect(self.config)

    async def close(self) -> None:
        client, self._client = self._client, None
        self._add_script = None
        if client is not None:
            await client.aclose()

    async def _send(self, use_case: str, tickets: Sequence[DispatchTicket]) -> int:
        """Add the tickets to the use case's stream; if that failed, their jobs go back to
        pending at once and ``RedisError`` is raised."""
        try:
            await self._add(self.config.stream_of(use_case), tickets)
        except Exception as exc:  # whatever failed, its jobs go back to pending at once
            return await self._sent(tickets, tickets, exc)
        return await self._sent(tickets, (), None)

    async def _add(self, stream: str, tickets: Sequence[DispatchTicket]) -> None:
        """One script call adds every ticket: one round trip, and a worker blocked in
        ``XREADGROUP`` is answered once with the whole batch, not with its first entry
        (which would cost a claim statement of its own)."""
        if self._add_script is None:
            self._add_script = self._client.register_script(ADD_SCRIPT)
        messages = [ticket.to_message() for ticket in tickets]
        async with _translated(f"add to {stream}"):
            await self._add_script(keys=[stream], args=[self.config.max_len, FIELD, *messages])


# -- the worker's side ----------------------------------------------------------------------


@dataclasses.dataclass(slots=True)
class Received:
    """An entry this worker holds: pending under its consumer until acknowledged."""

    stream: str
    entry_id: str
    ticket: DispatchTicket | None  # None: a malformed entry, held only to be deleted


class RedisTransport(BrokerTransport[Received]):
    """A worker's ``Transport`` over Redis Streams (see the module's docstring; the buffer,
    the claim and the stop are ``transports.broker``'s)."""

    broker = "Redis"
    error = RedisError
    backoff = BACKOFF
    log = log
    poll_task = POLL_TASK
    reads_ahead = True
    read_failed = "cannot read from Redis"
    stale_line = "%d entries named no job queued for them; acknowledged"
    malformed_line = "dropping a malformed entry (%s): %s"

    def __init__(
        self,
        store: JobStore,
        config: RedisConfig,
        worker_id: str,
        lease_seconds: float,
        use_cases: Sequence[str] = (),
        metrics: Metrics | None = None,
    ) -> None:
        require_redis()
        super().__init__(store, worker_id, lease_seconds, transport="redis", metrics=metrics)
        self.config = config
        self._streams = sorted({config.stream_of(u) for u in use_cases or config.use_cases})
        self._client: Any = None
        self._ack_script: Any = None

    async def start(self) -> None:
        """Connect and make sure every stream has its group; while Redis does not answer,
        retry with backoff until it does or the worker is stopped."""
        self._client = connect(self.config)
        self._ack_script = self._client.register_script(ACK_SCRIPT)
        if self._woken.is_set() or not await self._until_answered(self._ensure_groups):
            return
        self._start_polls(self._streams, self._keep(), "async-jobs-redis-keep")

    async def _ensure_groups(self) -> bool:
        async with _translated("create the consumer groups"):
            for stream in self._streams:
                if await ensure_group(self._client, stream):
                    self.counts["group_created"] += 1
        return True

    @property
    def _poll_grace(self) -> float:
        return self.config.block_seconds

    async def _close(self) -> None:
        if self._client is not None:
            await self._client.aclose()
            self._client = None

    async def _read(self, source: str, count: int) -> list[tuple[str, Any]]:
        from redis.exceptions import ResponseError

        block_ms = max(1, int(self.config.block_seconds * 1000))
        async with _translated(f"read {source}"):
            try:
                answer = await self._client.xreadgroup(
                    GROUP, self._worker_id, {source: ">"}, count=count, block=block_ms
                )
            except ResponseError as exc:
                if not _no_group(exc):
                    raise
                # Redis lost the group (emptied, restarted without persistence): make it
                # again, from the stream's start; the store's deadlines resend what was lost.
                log.warning("the group of %s is gone; creating it again", source)
                if await ensure_group(self._client, source):
                    self.counts["group_created"] += 1
                return []
        entries: list[tuple[str, Any]] = []
        for _, items in _streams_of(answer):
            entries.extend(items)
        return entries

    def _decode(self, message: Any) -> str:
        fields = message[1]
        body = fields.get(FIELD, "") if isinstance(fields, Mapping) else ""
        return body if isinstance(body, str) else ""

    def _shown(self, message: Any) -> str:
        return str(message[1])

    def _holding(self, source: str, message: Any, ticket: DispatchTicket | None) -> Received:
        return Received(source, message[0], ticket)

    async def _keep(self) -> None:
        """Every third of a lease: reset the idle time of the entries held (buffered or
        running), so no one takes them over, and take over entries of consumers idle for
        longer than a lease (``XAUTOCLAIM``), as many as there are free slots."""
        interval = max(0.5, self._lease_seconds / 3)
        idle_ms = max(1, int(self._lease_seconds * 1000))
        while True:
            await asyncio.sleep(interval * random.uniform(0.9, 1.0))  # wait-ok: a period
            held = list(self._buffer) + list(self._held.values())
            for stream, group in by(held, lambda r: r.stream).items():
                try:
                    async with _translated(f"keep entries of {stream}"):
                        await self._client.xclaim(
                            stream,
                            GROUP,
                            self._worker_id,
                            0,
                            [r.entry_id for r in group],
                            justid=True,
                        )
                except RedisError as exc:
                    log.warning("cannot keep %d entries of %s: %s", len(group), stream, exc)
            for stream in self._streams:
                free = self._wanted - len(self._buffer)
                if free <= 0:
                    break
                try:
                    async with _translated(f"take over entries of {stream}"):
                        answer = await self._client.xautoclaim(
                            stream, GROUP, self._worker_id, idle_ms, "0-0", count=free
                        )
                except RedisError as exc:
                    if not _no_group(exc):
                        log.warning("cannot take over entries of %s: %s", stream, exc)
                    continue
                claimed = [e for e in answer[1] if e and e[1] is not None]
                gone = list(answer[2]) if len(answer) > 2 else []
                if gone:  # in the group's list but deleted from the stream: let them go
                    self._finish_later([Received(stream, entry_id, None) for entry_id in gone])
                if claimed:
                    self.counts["autoclaimed"] += len(claimed)
                    log.info("took over %d entries idle in %s", len(claimed), stream)
                    self._accept(stream, claimed)

    async def _release(self, entries: Sequence[Received]) -> None:
        """Hand entries back: add their tickets again, acknowledge and delete the old ones."""
        for stream, group in by(entries, lambda r: r.stream).items():
            try:
                async with _translated(f"hand back entries of {stream}"):
                    pipe = self._client.pipeline(transaction=False)
                    for received in group:
                        if received.ticket is not None:
                            pipe.xadd(
                                stream,
                                {FIELD: received.ticket.to_message()},
                                maxlen=self.config.max_len,
                                approximate=True,
                            )
                    ids = [r.entry_id for r in group]
                    pipe.xack(stream, GROUP, *ids)
                    pipe.xdel(stream, *ids)
                    await pipe.execute()
                self.counts["released"] += len(group)
            except RedisError as exc:  # taken over after a lease's idle time, or lapsed
                log.warning("cannot hand back %d entries: %s", len(group), exc)

    async def _finish(self, entries: Sequence[Received]) -> None:
        """Acknowledge and delete entries (``XACK`` + ``XDEL``, one script call a stream)."""
        for stream, group in by(entries, lambda r: r.stream).items():
            ids = [r.entry_id for r in group]
            try:
                async with _translated(f"acknowledge entries of {stream}"):
                    await self._ack_script(keys=[stream], args=[GROUP, " ".join(ids)])
            except RedisError as exc:  # taken over after a lease's idle time: stale then
                log.warning("cannot acknowledge %d entries: %s", len(ids), exc)
                continue
            self.counts["acked"] += len(ids)


def _streams_of(answer: Any) -> list[tuple[str, list[tuple[str, Any]]]]:
    """``XREADGROUP``'s answer (RESP2, redis-py's default) as (stream, entries) pairs."""
    return [(str(stream), list(items)) for stream, items in answer or ()]
