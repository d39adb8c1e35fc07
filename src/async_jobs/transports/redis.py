"""The redis transport: the leading scheduler dispatches jobs to one Redis stream per use case
(one consumer group each), workers on any number of machines read them.

The store stays the truth; an entry only carries a ``DispatchTicket`` ("job X, attempt N,
under dispatch D"), as an SQS message does for the sqs transport. The flow, each step guarded:

1. ``RedisDispatcher`` (in the leading scheduler) moves due jobs within every limit from
   ``pending`` to ``queued`` under a fresh dispatch id and a deadline (the outbox), then adds
   their tickets to the streams (``XADD`` with an approximate ``MAXLEN``), one pipeline per
   stream. A failed add puts its jobs back to ``pending`` at once; an entry lost without an
   error (Redis restarted without persistence, ``FLUSHALL``, trimmed) is caught by the
   deadline: a job nobody claimed by then goes back to ``pending`` and is dispatched again.
   At most the dispatch window of each use case (``ASYNC_JOBS_DISPATCH_WINDOW``) is queued
   at once (``transports.dispatch``, shared with the sqs transport).
2. ``RedisTransport`` (in a worker) reads its streams with ``XREADGROUP`` (blocking, only as
   many entries as it has free slots) and claims the named jobs in one statement (``queued``
   -> ``running``) only while each is still queued under that dispatch and attempt. An entry
   for anything else (a duplicate, a late or forged entry, a cancelled job) is acknowledged,
   deleted and counted; a malformed one is logged (truncated), acknowledged, deleted, counted.
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
import collections
import contextlib
import dataclasses
import logging
import random
import time
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from async_jobs.core.metrics import Metrics, TransportCounts
from async_jobs.core.settings import DEFAULT_DISPATCH_WINDOW, Settings
from async_jobs.domain.dispatch import DispatchTicket, MalformedMessageError, truncated
from async_jobs.domain.errors import AsyncJobsError, ConfigurationError, StoreError
from async_jobs.domain.jobs import AttemptOutcome, Job, JobId
from async_jobs.domain.retry import Backoff
from async_jobs.domain.scheduling import Limits
from async_jobs.ports import JobStore
from async_jobs.transports.dispatch import BrokerDispatcher

log = logging.getLogger("async_jobs.redis")

BACKOFF = Backoff.exponential(0.2, cap_seconds=10.0, jitter=0.5)
CLUSTER_SCHEMES = {"redis+cluster": "redis", "rediss+cluster": "rediss"}
FIELD = "t"  # the one field of an entry: the ticket
GROUP = "async-jobs"
POLL_TASK = "async-jobs-redis-poll:"
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


class RedisDispatcher(BrokerDispatcher):
    """Run by the leading scheduler: adds due jobs to their use case's stream, at most the
    dispatch window of each use case unclaimed at once (``transports.dispatch``)."""

    broker = "Redis"
    error = RedisError
    backoff = BACKOFF
    log = log

    def __init__(
        self,
        store: JobStore,
        config: RedisConfig,
        limits: Limits,
        holder: str = "scheduler",
        batch: int = 100,
        window: int = DEFAULT_DISPATCH_WINDOW,
        metrics: Metrics | None = None,
    ) -> None:
        require_redis()
        super().__init__(
            store,
            config.use_cases,
            limits,
            holder=holder,
            batch=batch,
            window=window,
            dispatch_timeout_seconds=config.dispatch_timeout_seconds,
            transport="redis",
            metrics=metrics,
        )
        self.config = config
        self._client: Any = None

    async def _open(self) -> None:
        if self._client is None:
            self._client = connect(self.config)

    async def close(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            await client.aclose()

    async def _send(self, jobs: Sequence[Job]) -> int:
        """Add the tickets, one pipeline per stream, all at once; jobs whose add failed go
        back to pending at once. Raises ``RedisError`` (after that) if an add failed."""
        groups = _by(jobs, lambda j: j.use_case)
        answers = await asyncio.gather(
            *(self._add(self.config.stream_of(u), group) for u, group in groups.items()),
            return_exceptions=True,
        )
        unsent: list[DispatchTicket] = []
        error: BaseException | None = None
        for group, answer in zip(groups.values(), answers, strict=True):
            if isinstance(answer, BaseException):
                error = answer
                unsent.extend(DispatchTicket.of(job) for job in group)
        return await self._sent(jobs, unsent, error)

    async def _add(self, stream: str, jobs: Sequence[Job]) -> None:
        async with _translated(f"add to {stream}"):
            pipe = self._client.pipeline(transaction=False)
            for job in jobs:
                pipe.xadd(
                    stream,
                    {FIELD: DispatchTicket.of(job).to_message()},
                    maxlen=self.config.max_len,
                    approximate=True,
                )
            await pipe.execute()


# -- the worker's side ----------------------------------------------------------------------


@dataclasses.dataclass(slots=True)
class Received:
    """An entry this worker holds: pending under its consumer until acknowledged."""

    stream: str
    entry_id: str
    ticket: DispatchTicket | None  # None: a malformed entry, held only to be deleted


class RedisTransport:
    """A worker's ``Transport`` over Redis Streams (see the module's docstring)."""

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
        self._store = store
        self.config = config
        self._worker_id = worker_id
        self._lease_seconds = lease_seconds
        self._streams = sorted({config.stream_of(u) for u in use_cases or config.use_cases})
        self._client: Any = None
        self._buffer: collections.deque[Received] = collections.deque()
        self._held: dict[JobId, Received] = {}
        self._wanted = 0
        self._asking = 0
        self._demand = asyncio.Event()
        self._arrived = asyncio.Event()
        self._woken = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._acks: set[asyncio.Task[None]] = set()
        self._stop_begun = False
        self.counts: collections.Counter[str] = TransportCounts("redis", metrics)

    async def start(self) -> None:
        """Connect and make sure every stream has its group; while Redis does not answer,
        retry with backoff until it does or the worker is stopped."""
        self._client = connect(self.config)
        failures = 0
        while not self._woken.is_set():
            try:
                async with _translated("create the consumer groups"):
                    for stream in self._streams:
                        if await ensure_group(self._client, stream):
                            self.counts["group_created"] += 1
                break
            except RedisError as exc:
                failures += 1
                delay = BACKOFF.delay(failures)
                log.warning("Redis does not answer (retry in %.1fs): %s", delay, exc)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._woken.wait(), delay)
        if self._woken.is_set():
            return
        self._tasks = [
            asyncio.create_task(self._poll(s), name=f"{POLL_TASK}{s}") for s in self._streams
        ]
        self._tasks.append(asyncio.create_task(self._keep(), name="async-jobs-redis-keep"))

    async def stop(self) -> None:
        # A read cut short on our side may still be answered by Redis, its entries then
        # pending under our consumer: let the reads under way end (they stopped asking when
        # the worker began stopping), then hand back what they got.
        self._stop_begun = True
        self._woken.set()
        self._demand.set()
        polls = [t for t in self._tasks if t.get_name().startswith(POLL_TASK)]
        for task in self._tasks:
            if task not in polls:
                task.cancel()
        if polls:
            _, late = await asyncio.wait(polls, timeout=self.config.block_seconds + 5)
            for task in late:
                task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks = []
        unclaimed = list(self._buffer)
        self._buffer.clear()
        if unclaimed:  # received, never started: readable by other workers at once
            await self._release(unclaimed)
        if self._acks:
            await asyncio.wait(self._acks, timeout=10)
        if self._client is not None:
            await self._client.aclose()
            self._client = None

    def wake(self) -> None:
        self._woken.set()  # the worker is stopping: no new reads
        self._arrived.set()
        self._demand.set()

    def nudge(self) -> None:
        return None  # slots are filled by the scheduler's dispatch, not by this worker

    @property
    def asking(self) -> int:
        """Entries asked for by the reads under way."""
        return self._asking

    @property
    def stopping(self) -> bool:
        """``stop`` has begun."""
        return self._stop_begun

    def forget(self, job_id: JobId) -> None:
        received = self._held.pop(job_id, None)
        if received is not None:
            self._ack_later([received])

    async def receive(self, capacity: int, wait_seconds: float) -> list[Job]:
        self._wanted = capacity
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
        done = [r for o in outcomes if (r := self._held.pop(o.job_id, None)) is not None]
        self._ack_later(done)
        return written

    # -- inside ---------------------------------------------------------------------------

    async def _claim(self, taken: list[Received]) -> list[Job]:
        """Start the jobs the entries name; acknowledge the entries that start nothing."""
        try:
            jobs = await self._store.claim_dispatched(
                [r.ticket for r in taken if r.ticket is not None],
                self._worker_id,
                self._lease_seconds,
            )
        except StoreError:
            self._buffer.extendleft(reversed(taken))  # still pending under us; next time
            raise
        started = {job.id for job in jobs}
        stale = []
        for received in taken:
            job_id = received.ticket.job_id if received.ticket is not None else None
            if job_id is not None and job_id in started and job_id not in self._held:
                self._held[job_id] = received
            else:
                stale.append(received)
        self.counts["claimed"] += len(jobs)
        if stale:
            self.counts["stale"] += len(stale)
            log.info("%d entries named no job queued for them; acknowledged", len(stale))
            self._ack_later(stale)
        return jobs

    async def _poll(self, stream: str) -> None:
        failures = 0
        block_ms = max(1, int(self.config.block_seconds * 1000))
        while not self._woken.is_set():
            count = self._wanted - len(self._buffer) - self._asking
            if count <= 0:
                self._demand.clear()
                await self._demand.wait()
                continue
            self._asking += count
            try:
                async with _translated(f"read {stream}"):
                    answer = await self._read(stream, count, block_ms)
            except RedisError as exc:
                failures += 1
                delay = BACKOFF.delay(failures)
                log.warning("cannot read from Redis (retry in %.1fs): %s", delay, exc)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._woken.wait(), delay)
                continue
            finally:
                self._asking -= count
            failures = 0
            self._accept(stream, answer)

    async def _read(self, stream: str, count: int, block_ms: int) -> list[tuple[str, Any]]:
        from redis.exceptions import ResponseError

        try:
            answer = await self._client.xreadgroup(
                GROUP, self._worker_id, {stream: ">"}, count=count, block=block_ms
            )
        except ResponseError as exc:
            if not _no_group(exc):
                raise
            # Redis lost the group (emptied, restarted without persistence): make it again,
            # from the stream's start; the store's deadlines resend what was lost.
            log.warning("the group of %s is gone; creating it again", stream)
            if await ensure_group(self._client, stream):
                self.counts["group_created"] += 1
            return []
        entries: list[tuple[str, Any]] = []
        for _, items in _streams_of(answer):
            entries.extend(items)
        return entries

    def _accept(self, stream: str, entries: Iterable[tuple[str, Any]]) -> None:
        malformed = []
        for entry_id, fields in entries:
            self.counts["received"] += 1
            body = fields.get(FIELD, "") if isinstance(fields, Mapping) else ""
            try:
                ticket = DispatchTicket.from_message(body if isinstance(body, str) else "")
            except MalformedMessageError as exc:
                log.warning("dropping a malformed entry (%s): %s", exc, truncated(str(fields)))
                self.counts["malformed"] += 1
                malformed.append(Received(stream, entry_id, None))
                continue
            self._buffer.append(Received(stream, entry_id, ticket))
        if malformed:
            self._ack_later(malformed)
        self._arrived.set()

    async def _keep(self) -> None:
        """Every third of a lease: reset the idle time of the entries held (buffered or
        running), so no one takes them over, and take over entries of consumers idle for
        longer than a lease (``XAUTOCLAIM``), as many as there are free slots."""
        interval = max(0.5, self._lease_seconds / 3)
        idle_ms = max(1, int(self._lease_seconds * 1000))
        while True:
            await asyncio.sleep(interval * random.uniform(0.9, 1.0))  # wait-ok: a period
            held = list(self._buffer) + list(self._held.values())
            for stream, group in _by(held, lambda r: r.stream).items():
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
                    self._ack_later([Received(stream, entry_id, None) for entry_id in gone])
                if claimed:
                    self.counts["autoclaimed"] += len(claimed)
                    log.info("took over %d entries idle in %s", len(claimed), stream)
                    self._accept(stream, claimed)

    async def _release(self, entries: Sequence[Received]) -> None:
        """Hand entries back: add their tickets again, acknowledge and delete the old ones."""
        for stream, group in _by(entries, lambda r: r.stream).items():
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

    def _ack_later(self, entries: Sequence[Received]) -> None:
        if not entries:
            return
        task = asyncio.create_task(self._ack(entries))
        self._acks.add(task)
        task.add_done_callback(self._acks.discard)

    async def _ack(self, entries: Sequence[Received]) -> None:
        for stream, group in _by(entries, lambda r: r.stream).items():
            ids = [r.entry_id for r in group]
            try:
                async with _translated(f"acknowledge entries of {stream}"):
                    pipe = self._client.pipeline(transaction=False)
                    pipe.xack(stream, GROUP, *ids)
                    pipe.xdel(stream, *ids)
                    await pipe.execute(raise_on_error=False)
            except RedisError as exc:  # taken over after a lease's idle time: stale then
                log.warning("cannot acknowledge %d entries: %s", len(ids), exc)
                continue
            self.counts["acked"] += len(ids)


def _streams_of(answer: Any) -> list[tuple[str, list[tuple[str, Any]]]]:
    """``XREADGROUP``'s answer (RESP2, redis-py's default) as (stream, entries) pairs."""
    return [(str(stream), list(items)) for stream, items in answer or ()]


def _by(items: Iterable[Any], key: Any) -> dict[Any, list[Any]]:
    groups: dict[Any, list[Any]] = {}
    for item in items:
        groups.setdefault(key(item), []).append(item)
    return groups
