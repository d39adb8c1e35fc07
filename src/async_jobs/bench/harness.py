"""The harness of ``async-jobs bench``: its options, the command, and what every scenario
uses (the database set-up, the worker process, polling, percentiles, the table). The
scenarios are in one module per transport (``direct``, ``sqs``, ``redis``; the broker
benches share ``broker``), the table's shape and every statement on it in ``scale``.

The helpers in the second half are also used by ``bench/pgqueuer_peer.py``, so both queues
are measured by the same code. The method is written up in ``bench/README.md``.

Module-level imports stay within the standard library: the CLI imports this module to build
its parser, so whatever it imported would count in every worker's memory.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any
from urllib.parse import unquote, urlsplit, urlunsplit

if TYPE_CHECKING:
    import asyncio

    import asyncpg

    from async_jobs.app import JobApp
    from async_jobs.core.settings import Settings

DEFAULT_DSN = "postgresql://postgres@127.0.0.1:5432/async_jobs_bench"
HANDLERS_MODULE = "async_jobs.bench_handlers"
READY_PREFIX = "async-jobs worker ready"
SUPPORTED_TRANSPORTS = ("direct", "sqs", "redis")
LOCAL_HOSTS = frozenset({"", "localhost", "127.0.0.1", "::1"})

LATENCY_CONCURRENCY = 10
LATENCY_INTERVAL_MS = 20.0
IDLE_SECONDS = 1.0  # the latency worker sits idle this long before the first job
READY_TIMEOUT_SECONDS = 60.0
STOP_TIMEOUT_SECONDS = 30.0
MIN_POLL_SECONDS = 0.002
MAX_POLL_SECONDS = 0.05


class BenchError(Exception):
    """The benchmark could not run (exit code 1)."""


class BenchUsageError(BenchError):
    """Bad options (exit code 2)."""


@dataclasses.dataclass(frozen=True, slots=True)
class Metric:
    key: str
    label: str
    unit: str
    higher_is_better: bool


METRICS = (
    Metric("enqueue_single_jobs_per_s", "enqueue, one call per job", "jobs/s", True),
    Metric("enqueue_batch_jobs_per_s", "enqueue, in batches", "jobs/s", True),
    Metric("drain_jobs_per_s", "drain, one worker process", "jobs/s", True),
    Metric("latency_p50_ms", "enqueue-to-start latency p50", "ms", False),
    Metric("latency_p95_ms", "enqueue-to-start latency p95", "ms", False),
    Metric("latency_p99_ms", "enqueue-to-start latency p99", "ms", False),
    Metric("worker_peak_rss_mb", "worker peak RSS (VmHWM), drain", "MB", False),
    Metric("latency_worker_cpu_us", "worker CPU per job, latency scenario", "us", False),
    Metric("latency_postgresql_cpu_us", "PostgreSQL CPU per job, latency scenario", "us", False),
)
SQS_METRICS = (
    Metric("sqs_raw_msgs_per_s", "SQS server alone: send+receive+delete", "msgs/s", True),
    Metric("drain_jobs_per_s", "drain: scheduler + worker over SQS", "jobs/s", True),
    Metric("drain_vs_raw", "drain / server alone", "ratio", True),
)
REDIS_METRICS = (
    Metric("drain_jobs_per_s", "drain: scheduler + worker over Redis", "jobs/s", True),
    Metric("direct_drain_jobs_per_s", "drain: one worker, direct", "jobs/s", True),
    Metric("redis_vs_direct", "redis drain / direct drain", "ratio", True),
    Metric("latency_p50_ms", "enqueue-to-start latency p50 (redis)", "ms", False),
    Metric("latency_p95_ms", "enqueue-to-start latency p95 (redis)", "ms", False),
    Metric("latency_p99_ms", "enqueue-to-start latency p99 (redis)", "ms", False),
)


# -- the command -----------------------------------------------------------------------------


def configure_parser(parser: argparse.ArgumentParser) -> None:
    """The options of ``async-jobs bench`` (also used by ``bench/pgqueuer_peer.py``)."""
    from async_jobs.bench.scale import add_shape_options

    add_common_options(parser, default_dsn=os.environ.get("ASYNC_JOBS_DB_DSN") or DEFAULT_DSN)
    add_shape_options(parser)
    parser.add_argument(
        "--transport",
        default="direct",
        help="direct: enqueue, drain, latency, memory; sqs: the drain through an SQS server "
        "next to that server's own rate",
    )
    parser.add_argument(
        "--sqs-endpoint-url",
        default=os.environ.get("ASYNC_JOBS_SQS_ENDPOINT_URL"),
        help="SQS-compatible server of --transport sqs (default: moto's server, started "
        "by the benchmark on a free port)",
    )
    parser.add_argument(
        "--sqs-server",
        choices=("moto", "fauxqs"),
        default="moto",
        help="without --sqs-endpoint-url: the local SQS server the benchmark starts "
        "(moto: pip's moto[server]; fauxqs: npm's, faster; `make bench-sqs` installs it)",
    )
    parser.add_argument(
        "--redis-url",
        help="Redis of --transport redis (default: a redis-server started by the benchmark "
        "on a free port)",
    )
    parser.add_argument(
        "--rounds",
        type=int,
        default=3,
        help="--transport sqs: rounds of (server alone, drain); redis: of (direct drain, "
        "redis drain); medians are reported",
    )
    parser.add_argument(
        "--window",
        type=int,
        help="--transport sqs: messages outstanding at most, raw and drain alike "
        "(the use case's max_concurrent; default: twice --concurrency)",
    )


def add_common_options(parser: argparse.ArgumentParser, *, default_dsn: str) -> None:
    from async_jobs.core.settings import duration_flag

    parser.add_argument(
        "--dsn",
        default=default_dsn,
        help="PostgreSQL database to run in, created if missing "
        f"(default: {redact_dsn(default_dsn)})",
    )
    parser.add_argument("--jobs", type=int, default=10_000, help="jobs per scenario (N)")
    parser.add_argument(
        "--concurrency", type=int, default=50, help="jobs the drain worker runs at once"
    )
    parser.add_argument(
        "--batch-size", type=int, default=1000, help="jobs per call of the batch enqueue"
    )
    parser.add_argument(
        "--latency-jobs", type=int, default=300, help="jobs of the latency scenario"
    )
    parser.add_argument(
        "--latency-interval-ms",
        type=duration_flag,
        default=LATENCY_INTERVAL_MS,
        help="pause between the enqueues of the latency scenario",
    )
    parser.add_argument(
        "--latency-concurrency",
        type=int,
        default=LATENCY_CONCURRENCY,
        help="concurrency of the idle worker of the latency scenario",
    )
    parser.add_argument(
        "--recreate",
        action="store_true",
        help="drop and create the database first (local databases named *bench* only)",
    )
    parser.add_argument("--json", metavar="FILE", help="also write the results as JSON here")


@dataclasses.dataclass(frozen=True, slots=True)
class BenchOptions:
    dsn: str
    jobs: int
    concurrency: int
    batch_size: int
    latency_jobs: int
    latency_interval_ms: float
    latency_concurrency: int
    recreate: bool
    json_path: str | None
    transport: str = "direct"
    sqs_endpoint_url: str | None = None
    sqs_server: str = "moto"
    rounds: int = 1
    window: int = 0  # --transport sqs; 0: twice the concurrency
    redis_url: str | None = None  # --transport redis; None: a redis-server of its own
    history: int = 0  # the table's shape: see bench_scale
    backlog: int = 0
    tenants: int = 1

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> BenchOptions:
        options = cls(
            dsn=args.dsn,
            jobs=args.jobs,
            concurrency=args.concurrency,
            batch_size=args.batch_size,
            latency_jobs=args.latency_jobs,
            latency_interval_ms=args.latency_interval_ms,
            latency_concurrency=args.latency_concurrency,
            recreate=args.recreate,
            json_path=args.json,
            transport=getattr(args, "transport", "direct"),
            sqs_endpoint_url=getattr(args, "sqs_endpoint_url", None),
            sqs_server=getattr(args, "sqs_server", "moto"),
            rounds=getattr(args, "rounds", 1),
            window=_window(getattr(args, "window", None), args.concurrency),
            redis_url=getattr(args, "redis_url", None),
            history=getattr(args, "history", 0),
            backlog=getattr(args, "backlog", 0),
            tenants=getattr(args, "tenants", 1),
        )
        options.check()
        return options

    def check(self) -> None:
        names = (
            "jobs",
            "concurrency",
            "batch_size",
            "latency_jobs",
            "latency_concurrency",
            "window",
            "rounds",
        )
        for name in names:
            if getattr(self, name) < 1:
                raise BenchUsageError(f"--{name.replace('_', '-')} must be at least 1")
        from async_jobs.bench.scale import Shape, check_shape

        complaint = check_shape(Shape(self.history, self.backlog, self.tenants))
        if complaint is not None:
            raise BenchUsageError(complaint)
        if self.latency_interval_ms < 0:
            raise BenchUsageError("--latency-interval-ms must not be negative")
        if urlsplit(self.dsn).scheme not in ("postgresql", "postgres"):
            raise BenchUsageError(
                f"the benchmark runs on PostgreSQL; {redact_dsn(self.dsn)!r} is not a "
                "postgresql:// DSN (give one with --dsn)"
            )


def _window(given: int | None, concurrency: int) -> int:
    return 2 * concurrency if given is None else given


def run(args: argparse.Namespace) -> int:
    """``async-jobs bench``: 0 done, 1 the benchmark failed, 2 bad options."""
    from async_jobs.domain.errors import AsyncJobsError

    try:
        options = BenchOptions.from_args(args)
        if options.transport not in SUPPORTED_TRANSPORTS:
            raise BenchUsageError(
                f"transport {options.transport!r} is not supported by the benchmark yet; "
                f"use one of: {', '.join(SUPPORTED_TRANSPORTS)}"
            )
        if options.transport == "sqs":
            from async_jobs.bench.sqs import bench_sqs

            result = run_async(bench_sqs(options))
        elif options.transport == "redis":
            from async_jobs.bench.redis import bench_redis

            result = run_async(bench_redis(options))
        else:
            from async_jobs.bench.direct import bench_direct

            result = run_async(bench_direct(options))
    except BenchUsageError as exc:
        print(f"async-jobs bench: error: {exc}", file=sys.stderr)
        return 2
    except (BenchError, AsyncJobsError, OSError) as exc:
        print(f"async-jobs bench: error: {exc}", file=sys.stderr)
        return 1
    print(render_table(f"async-jobs {version()}", result), flush=True)
    if "sizes_after" in result.details:
        from async_jobs.bench.scale import render_sizes

        print("\n".join(render_sizes(result.details["sizes_after"])), flush=True)
    if options.json_path:
        write_json(options.json_path, result)
    return 0


def run_async(coro: Awaitable[BenchResult]) -> BenchResult:
    """Run the benchmark coroutine; driver errors become ``BenchError``."""
    import asyncio

    import asyncpg

    async def guarded() -> BenchResult:
        try:
            return await coro
        except (asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
            raise BenchError(f"PostgreSQL: {exc}") from exc

    return asyncio.run(guarded())


@dataclasses.dataclass(slots=True)
class BenchResult:
    metrics: dict[str, float]
    settings: dict[str, Any]
    details: dict[str, Any] = dataclasses.field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {**self.metrics, "settings": self.settings, "details": self.details}


def version() -> str:
    from importlib import metadata

    try:
        return metadata.version("async-job-server")
    except metadata.PackageNotFoundError:
        return "dev"


# -- the pieces of every transport's scenarios -------------------------------------------------


async def enqueue_batch(app: JobApp, n: int, batch_size: int) -> float:
    from async_jobs.app import EnqueueRequest

    progress(f"enqueue: {n} jobs in batches of {batch_size}")
    start = time.perf_counter()
    for first in range(0, n, batch_size):
        batch = [EnqueueRequest("noop", {"i": i}) for i in range(first, min(first + batch_size, n))]
        await app.enqueue_many(batch)
    return n / (time.perf_counter() - start)


def _command(*args: str) -> list[str]:
    # ``python -m async_jobs`` is the ``async-jobs`` command (``python -m async_jobs.cli``
    # imports the CLI without running it).
    return [sys.executable, "-m", "async_jobs", "--log-level", "WARNING", *args]


def worker_argv(concurrency: int) -> list[str]:
    return _command("worker", "--handlers", HANDLERS_MODULE, "--concurrency", str(concurrency))


def scheduler_argv() -> list[str]:
    return _command("scheduler", "--handlers", HANDLERS_MODULE)


def worker_env(o: BenchOptions) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "ASYNC_JOBS_HANDLERS"}
    env["ASYNC_JOBS_DB_DSN"] = o.dsn
    env["ASYNC_JOBS_TRANSPORT"] = o.transport
    # The bench's jobs are of the use case "default", uncapped unless the user's environment
    # sets ASYNC_JOBS_DEFAULT_MAX_CONCURRENT: the worker runs as the user's would.
    if o.history:
        # The worker leads the chores too; its retention would delete the seeded history
        # (finished over the last 7 days) and measure a smaller table than asked for.
        for name in (
            "ASYNC_JOBS_RETAIN_SUCCEEDED_HOURS",
            "ASYNC_JOBS_RETAIN_CANCELLED_HOURS",
            "ASYNC_JOBS_RETAIN_FAILED_HOURS",
        ):
            env[name] = "off"
    return env


async def check_queued(conn: asyncpg.Connection, jobs: int) -> None:
    """Before a drain: the N jobs are waiting; then fresh planner statistics (the same for
    both queues of the peers)."""
    from async_jobs.bench.scale import analyze, unfinished

    queued = await unfinished(conn)
    if queued != jobs:
        raise BenchError(f"expected {jobs} queued jobs before the drain, found {queued}")
    await analyze(conn)


async def wait_drained(
    conn: asyncpg.Connection, o: BenchOptions, since: float, worker: WorkerProcess
) -> float:
    """The ``perf_counter`` time at which the table showed every job ended."""
    from async_jobs.bench.scale import unfinished

    return await wait_until_zero(
        lambda: unfinished(conn),
        total=o.jobs,
        since=since,
        timeout=drain_timeout(o.jobs),
        worker=worker,
    )


async def check_all_succeeded(conn: asyncpg.Connection, jobs: int) -> None:
    from async_jobs.bench.scale import status_counts

    counts = await status_counts(conn)
    if counts.get("succeeded", 0) != jobs:
        raise BenchError(f"the drain did not succeed on every job: {counts}")


# -- shared with bench/pgqueuer_peer.py ------------------------------------------------------


def progress(message: str) -> None:
    print(f"[bench] {message}", file=sys.stderr, flush=True)


def redact_dsn(dsn: str) -> str:
    """The DSN without its password (a password in the query string is masked)."""
    from async_jobs.core.settings import mask_url_query

    dsn = mask_url_query(dsn)
    try:
        parts = urlsplit(dsn)
        if parts.password is None:
            return dsn
        host = parts.hostname or ""
        if ":" in host:
            host = f"[{host}]"
        netloc = f"{parts.username or ''}@{host}" + (f":{parts.port}" if parts.port else "")
        return urlunsplit(parts._replace(netloc=netloc))
    except ValueError:
        return "<unparseable DSN>"


def base_settings(
    o: BenchOptions, *, postgres_version: str, system: str, peer: str | None = None
) -> dict[str, Any]:
    import platform

    settings: dict[str, Any] = {
        "system": system,
        "jobs": o.jobs,
        "concurrency": o.concurrency,
        "batch_size": o.batch_size,
        "latency_jobs": o.latency_jobs,
        "latency_interval_ms": o.latency_interval_ms,
        "latency_concurrency": o.latency_concurrency,
        "dsn": redact_dsn(o.dsn),
        "transport": o.transport,
        "python_version": platform.python_version(),
        "cpu_count": os.cpu_count(),
        "postgres_version": postgres_version,
    }
    if peer is not None:
        settings["peer"] = peer
    return settings


def _quote_ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


async def prepare_database(dsn: str, *, recreate: bool = False) -> bool:
    """Make sure the DSN's database exists; create it when it is missing on a local server
    (or drop and create it with ``recreate``). True when it was created."""
    import asyncpg

    parts = urlsplit(dsn)
    name = unquote(parts.path.lstrip("/"))
    local = (parts.hostname or "") in LOCAL_HOSTS
    if recreate:
        if not (local and name and "bench" in name):
            raise BenchUsageError(
                "--recreate drops the database: it is only for a local database whose name "
                f"contains 'bench', not {redact_dsn(dsn)!r}"
            )
        await _admin(dsn, f"DROP DATABASE IF EXISTS {_quote_ident(name)} WITH (FORCE)")
        await _admin(dsn, f"CREATE DATABASE {_quote_ident(name)}")
        return True
    try:
        conn = await asyncpg.connect(dsn, timeout=10)
    except asyncpg.InvalidCatalogNameError:
        if not (local and name):
            raise BenchError(
                f"the database of {redact_dsn(dsn)!r} does not exist; create it first"
            ) from None
        with contextlib.suppress(asyncpg.DuplicateDatabaseError):
            await _admin(dsn, f"CREATE DATABASE {_quote_ident(name)}")
        return True
    except (OSError, TimeoutError, asyncpg.PostgresError) as exc:
        raise BenchError(f"cannot connect to {redact_dsn(dsn)}: {exc}") from exc
    await conn.close()
    return False


async def _admin(dsn: str, statement: str) -> None:
    """Run a statement from the server's ``postgres`` database."""
    import asyncpg

    admin_dsn = urlunsplit(urlsplit(dsn)._replace(path="/postgres"))
    try:
        conn = await asyncpg.connect(admin_dsn, timeout=10)
    except (OSError, TimeoutError, asyncpg.PostgresError) as exc:
        raise BenchError(f"cannot connect to {redact_dsn(admin_dsn)}: {exc}") from exc
    try:
        await conn.execute(statement)
    finally:
        await conn.close()


async def ensure_alone(conn: asyncpg.Connection) -> None:
    """Refuse to measure while another client is connected to the benchmark's database: a
    stray worker would take jobs and make every figure wrong."""
    from async_jobs.bench.scale import other_connections

    others = await other_connections(conn)
    if others:
        raise BenchError(
            f"{others} other connection(s) to the benchmark database (a worker left running?); "
            "stop them or give another --dsn"
        )


async def prepared(o: BenchOptions) -> None:
    """The benchmark's database exists (created when missing, or with ``--recreate``)."""
    created = await prepare_database(o.dsn, recreate=o.recreate)
    progress(f"database {redact_dsn(o.dsn)}{' (created)' if created else ''}")


@contextlib.asynccontextmanager
async def opened(
    o: BenchOptions, settings: Settings
) -> AsyncIterator[tuple[asyncpg.Connection, JobApp, str]]:
    """A connection of the benchmark's own (alone in its database), the app of ``settings``
    with the bench's handlers on the migrated schema, and PostgreSQL's version."""
    import asyncpg

    from async_jobs.app import JobApp
    from async_jobs.bench.scale import server_version

    conn = await asyncpg.connect(o.dsn)
    try:
        await ensure_alone(conn)
        pg_version = await server_version(conn)
        async with JobApp(settings=settings, handler_modules=[HANDLERS_MODULE]) as app:
            await app.migrate()
            yield conn, app, pg_version
    finally:
        await conn.close()


def drain_timeout(jobs: int) -> float:
    """Generous: a drain slower than 20 jobs/s is a failure, not a figure."""
    return max(120.0, jobs / 20)


class WorkerProcess:
    """A worker subprocess: its ready time (by ``time.perf_counter``), the lines it printed
    after that, its memory, and a clean stop."""

    def __init__(
        self, name: str, proc: asyncio.subprocess.Process, ready: str, stderr: IO[bytes]
    ) -> None:
        import asyncio

        self.name = name
        self.ready_at: float | None = None
        self.lines: list[str] = []
        self._proc = proc
        self._ready_prefix = ready
        self._stderr = stderr
        self._ready = asyncio.Event()
        self._line_added = asyncio.Event()
        self._reader = asyncio.create_task(self._read())

    @property
    def pid(self) -> int:
        return self._proc.pid

    async def _read(self) -> None:
        stream = self._proc.stdout
        assert stream is not None
        while raw := await stream.readline():
            now = time.perf_counter()
            line = raw.decode("utf-8", "replace").rstrip("\r\n")
            if self.ready_at is None and line.startswith(self._ready_prefix):
                self.ready_at = now
                self._ready.set()
            else:
                self.lines.append(line)
                self._line_added.set()
        self._ready.set()  # end of output: wake a waiter, which then sees no ready time
        self._line_added.set()

    async def wait_ready(self, timeout: float = READY_TIMEOUT_SECONDS) -> float:
        """The ``perf_counter`` time at which the ready line arrived."""
        import asyncio

        try:
            await asyncio.wait_for(self._ready.wait(), timeout)
        except TimeoutError:
            raise BenchError(
                f"{self.name} printed no ready line within {timeout:g} s{self.stderr_tail()}"
            ) from None
        if self.ready_at is None:
            await self._proc.wait()
            raise BenchError(
                f"{self.name} exited with code {self._proc.returncode} before it was ready"
                f"{self.stderr_tail()}"
            )
        return self.ready_at

    async def wait_lines(self, count: int, timeout: float) -> None:
        """Until ``count`` lines were printed after the ready line."""
        import asyncio

        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while len(self.lines) < count:
            self.check_alive()
            remaining = deadline - loop.time()
            if remaining <= 0:
                raise BenchError(f"{self.name} printed {len(self.lines)} of {count} lines")
            self._line_added.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._line_added.wait(), remaining)

    def check_alive(self) -> None:
        if self._proc.returncode is not None:
            raise BenchError(
                f"{self.name} exited with code {self._proc.returncode}{self.stderr_tail()}"
            )

    def peak_rss_mb(self) -> float:
        """VmHWM, the peak resident set size of the process so far, in MiB."""
        return read_vm_hwm_kb(self.pid) / 1024

    def stderr_tail(self, chars: int = 3000) -> str:
        try:
            self._stderr.flush()
            self._stderr.seek(0)
            text = self._stderr.read().decode("utf-8", "replace")
        except (OSError, ValueError):
            return ""
        return f"; its stderr ends with:\n{text[-chars:]}" if text.strip() else ""

    async def stop(self, timeout: float = STOP_TIMEOUT_SECONDS) -> int | None:
        import asyncio

        if self._proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                self._proc.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(self._proc.wait(), timeout)
            except TimeoutError:
                with contextlib.suppress(ProcessLookupError):
                    self._proc.kill()
                await self._proc.wait()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self._reader, 5)
        self._stderr.close()
        return self._proc.returncode


@contextlib.asynccontextmanager
async def worker_process(
    name: str,
    argv: Sequence[str],
    *,
    env: Mapping[str, str],
    ready: str,
    cwd: str | None = None,
) -> AsyncIterator[WorkerProcess]:
    """Start a worker process; stop it (SIGTERM, then SIGKILL) on the way out."""
    import asyncio
    import tempfile

    stderr = tempfile.TemporaryFile()  # noqa: SIM115 - closed by WorkerProcess.stop
    proc = await asyncio.create_subprocess_exec(
        *argv,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=stderr,
        env=dict(env),
        cwd=cwd,
    )
    worker = WorkerProcess(name, proc, ready, stderr)
    try:
        yield worker
    finally:
        await worker.stop()


def read_vm_hwm_kb(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1])
    except OSError as exc:
        raise BenchError(f"cannot read the memory of process {pid}: {exc}") from exc
    raise BenchError(f"/proc/{pid}/status has no VmHWM line")


async def wait_until_zero(
    count: Callable[[], Awaitable[int]],
    *,
    total: int,
    since: float,
    timeout: float,
    worker: WorkerProcess | None = None,
) -> float:
    """Poll ``count`` until it says 0; return the ``perf_counter`` time it did. The pause
    between polls is a quarter of the estimated time left (2 to 50 ms), so polling costs
    little and overshoots the end by a few milliseconds at most."""
    import asyncio

    deadline = time.perf_counter() + timeout
    pause = 0.01
    while True:
        remaining = await count()
        now = time.perf_counter()
        if remaining <= 0:
            return now
        if worker is not None:
            worker.check_alive()
        if now > deadline:
            raise BenchError(f"{remaining} of {total} jobs still unfinished after {timeout:g} s")
        done = total - remaining
        if done > 0 and now > since:
            left = remaining * (now - since) / done
            pause = min(MAX_POLL_SECONDS, max(MIN_POLL_SECONDS, left / 4))
        await asyncio.sleep(pause)


async def idle(worker: WorkerProcess, seconds: float = IDLE_SECONDS) -> None:
    """Let a ready worker reach its idle state (first empty fetch, listening)."""
    import asyncio

    await asyncio.sleep(seconds)
    worker.check_alive()


async def paced(count: int, interval: float, call: Callable[[int], Awaitable[None]]) -> None:
    """``call(i)`` for i in range(count), the i-th no earlier than start + i * interval."""
    import asyncio

    loop = asyncio.get_running_loop()
    start = loop.time()
    for i in range(count):
        delay = start + i * interval - loop.time()
        if delay > 0:
            await asyncio.sleep(delay)
        await call(i)


def percentile(values: Sequence[float], q: float) -> float:
    """The q-th percentile (0-100), interpolating between the closest ranks."""
    if not values:
        raise ValueError("no values")
    ordered = sorted(values)
    rank = (len(ordered) - 1) * q / 100
    low = int(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def latency_metrics(latencies_ms: Sequence[float]) -> dict[str, float]:
    return {
        "latency_p50_ms": percentile(latencies_ms, 50),
        "latency_p95_ms": percentile(latencies_ms, 95),
        "latency_p99_ms": percentile(latencies_ms, 99),
    }


def render_table(title: str, result: BenchResult) -> str:
    s = result.settings
    lines = [
        f"{title}: {s['jobs']} no-op jobs, drain concurrency {s['concurrency']}, "
        f"batches of {s['batch_size']}, transport {s['transport']}",
        f"  PostgreSQL {s['postgres_version']}, Python {s['python_version']}, "
        f"{s['cpu_count']} CPUs, {s['dsn']}",
        "",
        f"  {'metric':<36} {'value':>12}  unit",
        f"  {'-' * 36} {'-' * 12}  {'-' * 6}",
    ]
    shown_metrics = {"sqs": SQS_METRICS, "redis": REDIS_METRICS}.get(s["transport"], METRICS)
    for metric in shown_metrics:
        value = result.metrics.get(metric.key)
        shown = (
            "-" if value is None else f"{value:,.2f}" if metric.unit == "ratio" else f"{value:,.1f}"
        )
        lines.append(f"  {metric.label:<36} {shown:>12}  {metric.unit}")
    if "bottleneck" in result.details:
        cpu = ", ".join(f"{k} {v:.0%}" for k, v in sorted(result.details["cpu_share"].items()))
        lines += ["", f"  CPU during the drain (of a core; machine: of all): {cpu}"]
        lines.append(f"  bottleneck: {result.details['bottleneck']}")
    if "cpu_ms_per_job" in result.details:
        per_job = ", ".join(
            f"{k} {v:.3f}" for k, v in sorted(result.details["cpu_ms_per_job"].items())
        )
        lines.append(f"  CPU per job (ms): {per_job}")
    if "direct_cpu_ms_per_job" in result.details:
        per_job = ", ".join(
            f"{k} {v:.3f}" for k, v in sorted(result.details["direct_cpu_ms_per_job"].items())
        )
        lines.append(f"  CPU per job of the direct drain (ms): {per_job}")
    return "\n".join(lines)


def write_json(path: str, result: BenchResult) -> None:
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(json.dumps(result.to_json(), indent=2) + "\n", encoding="utf-8")
