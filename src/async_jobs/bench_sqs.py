"""``async-jobs bench --transport sqs``: the drain rate through an SQS-compatible server,
next to that server's own rate measured in the same run, and where the time goes.

1. raw: N messages through one queue with no job store, the way the transport moves
   them: sends of 10 (several at once), long-polled receives of up to 10, one delete
   call per received batch; at most ``window`` messages outstanding (sent, not deleted);
2. drain: N jobs enqueued in batches, then ONE scheduler process (it dispatches) and ONE
   worker process (it receives, claims, runs, records, deletes) with ``transport=sqs``;
   the clock starts when both printed their ready line and stops when the table shows all
   N terminal; the queue must then drain to 0 messages. The use case's ``max_concurrent``
   is the same ``window``: the scheduler dispatches only into free slots.

``--rounds`` rounds (default 3) alternate which of the two goes first; the table shows
the medians and their ratio. During each drain the CPU time of the worker, the scheduler,
the SQS server (when the benchmark started it) and PostgreSQL is read from ``/proc``: a
process near 100% of a core (or the machine near all of its cores) is the bottleneck the
table names.

Without ``--sqs-endpoint-url`` (or ``ASYNC_JOBS_SQS_ENDPOINT_URL``) the benchmark starts
moto's server (``pip install 'moto[server]'``) on a free port and stops it at the end.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import os
import shutil
import socket
import statistics
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from async_jobs.bench import (
    HANDLERS_MODULE,
    READY_PREFIX,
    BenchError,
    BenchOptions,
    BenchResult,
    _enqueue_batch,
    _truncate,
    _unfinished,
    _worker_argv,
    _worker_env,
    base_settings,
    check_all_succeeded,
    drain_timeout,
    ensure_alone,
    prepare_database,
    progress,
    redact_dsn,
    wait_drained,
    worker_process,
)

if TYPE_CHECKING:
    from async_jobs.transports.sqs import SqsClient

SCHEDULER_READY = "async-jobs scheduler ready"
ACCOUNT = "123456789012"  # the account id local SQS servers put in queue URLs
SATURATED = 0.85  # of a core (a process) or of every core (the machine)


async def bench_sqs(o: BenchOptions) -> BenchResult:
    import asyncpg

    from async_jobs.app import JobApp
    from async_jobs.core.settings import Settings

    logging.getLogger("aiobotocore.credentials").setLevel(logging.WARNING)  # said per client
    created = await prepare_database(o.dsn, recreate=o.recreate)
    progress(f"database {redact_dsn(o.dsn)}{' (created)' if created else ''}")
    with _sqs_server(o.sqs_endpoint_url, o.sqs_server) as (endpoint, server_pid):
        _default_credentials()
        started_here = f" ({o.sqs_server}, started here)" if server_pid else ""
        progress(f"SQS server {endpoint}{started_here}")
        conn = await asyncpg.connect(o.dsn)
        try:
            await ensure_alone(conn)
            pg_version = str(await conn.fetchval("SHOW server_version"))
            queue = await _create_queue(endpoint, f"bench-jobs-{uuid.uuid4().hex[:8]}")
            settings = Settings(
                db_dsn=o.dsn,
                transport="sqs",
                sqs_endpoint_url=endpoint,
                sqs_queues={"default": queue},
                max_concurrent={"default": o.window},
            )
            app = JobApp(settings=settings, handler_modules=[HANDLERS_MODULE])
            async with app:
                await app.migrate()
                raws: list[float] = []
                drains: list[tuple[float, dict[str, float]]] = []
                # Rounds alternate which goes first: the machine's speed drifts as it runs.
                for round_no in range(o.rounds):
                    if round_no % 2 == 0:
                        raws.append(await _raw_rate(app, endpoint, o))
                    await _truncate(conn)
                    await _enqueue_batch(app, o.jobs, o.batch_size)
                    drains.append(await _drain(app, conn, o, endpoint, queue, server_pid))
                    await _truncate(conn)
                    if round_no % 2 == 1:
                        raws.append(await _raw_rate(app, endpoint, o))
        finally:
            await conn.close()
    raw = statistics.median(raws)
    drain, cpu = sorted(drains)[(len(drains) - 1) // 2]  # the median round (lower middle)
    metrics = {
        "sqs_raw_msgs_per_s": raw,
        "drain_jobs_per_s": drain,
        "drain_vs_raw": drain / raw,
    }
    details: dict[str, Any] = {
        "cpu_share": cpu,
        "bottleneck": bottleneck(cpu),
        "sqs_endpoint": endpoint,
        "sqs_server": f"{o.sqs_server} (started by the benchmark)" if server_pid else "given",
        "rounds": o.rounds,
        "sqs_raw_samples": raws,
        "drain_samples": [rate for rate, _ in drains],
        "window": o.window,
    }
    settings_out = base_settings(o, postgres_version=pg_version, system="async-jobs sqs")
    return BenchResult(metrics, settings_out, details)


def bottleneck(cpu: dict[str, float]) -> str:
    """Name what limited the drain, from each part's share of a core (``machine``: of all
    cores together)."""
    parts = {k: v for k, v in cpu.items() if k != "machine"}
    busiest = max(parts, key=lambda k: parts[k]) if parts else None
    if busiest is not None and parts[busiest] >= SATURATED:
        return f"{busiest} ({parts[busiest]:.0%} of a core)"
    if cpu.get("machine", 0.0) >= SATURATED:
        return f"the machine's CPUs ({cpu['machine']:.0%} busy; busiest: {busiest})"
    return "no process saturated: round trips (latency between the parts), not CPU"


# -- the SQS server -------------------------------------------------------------------------


@contextlib.contextmanager
def _sqs_server(endpoint: str | None, kind: str) -> Iterator[tuple[str, int | None]]:
    """The given endpoint, or a server of ``kind`` (moto, fauxqs) started here on a free
    port: (url, its pid)."""
    if endpoint:
        yield endpoint, None
        return
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    argv, env = _server_command(kind, port)
    proc = subprocess.Popen(  # noqa: S603 - our own command line, no shell
        argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env={**os.environ, **env}
    )
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                    break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise BenchError(f"the {kind} SQS server did not start") from None
                time.sleep(0.05)  # wait-ok: polling interval of a deadline-bound wait
        yield f"http://127.0.0.1:{port}", proc.pid
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _server_command(kind: str, port: int) -> tuple[list[str], dict[str, str]]:
    if kind == "moto":
        try:
            import moto.server  # noqa: F401
        except ImportError:
            raise BenchError(
                "moto's server is not installed (pip install 'moto[server]'); or give "
                "--sqs-endpoint-url"
            ) from None
        return [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)], {}
    found = os.environ.get("FAUXQS_BIN") or shutil.which("fauxqs")
    local = Path("bench/node_modules/.bin/fauxqs")
    if not found and local.exists():
        found = str(local.resolve())
    if not found:
        raise BenchError(
            "fauxqs is not installed: `make bench-sqs` installs it under bench/ (npm), or "
            "set FAUXQS_BIN, or give --sqs-endpoint-url"
        )
    # Its node process does not take signals well through npm's wrappers: run the script.
    return [found], {"FAUXQS_PORT": str(port), "FAUXQS_HOST": "127.0.0.1"}


def _default_credentials() -> None:
    """Local servers take any credentials; botocore still wants some."""
    os.environ.setdefault("AWS_ACCESS_KEY_ID", "bench")
    os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "bench")


async def _create_queue(endpoint: str, name: str) -> str:
    from async_jobs.transports.sqs import SqsConfig, create_queues

    config = SqsConfig(queues={"default": f"{endpoint}/{ACCOUNT}/{name}"}, endpoint_url=endpoint)
    (made,) = await create_queues(config, max_attempts=3)
    return made["queue_url"]


# -- raw: the server without a job store ----------------------------------------------------


async def _raw_rate(app: Any, endpoint: str, o: BenchOptions) -> float:
    """Messages per second through the server, moved as the transport moves them."""
    from async_jobs.transports.sqs import SqsClient

    queue = await _create_queue(endpoint, f"bench-raw-{uuid.uuid4().hex[:8]}")
    progress(f"raw SQS: {o.jobs} messages, at most {o.window} outstanding")
    client = SqsClient(app.sqs_config())
    await client.open()
    try:
        return await _round_trips(client, queue, o.jobs, o.window)
    finally:
        await client.close()


async def _round_trips(client: SqsClient, queue: str, n: int, window: int) -> float:
    body = '{"v":1,"job":"00000000-0000-0000-0000-000000000000","attempt":1}'
    sent = 0
    done = 0
    room = asyncio.Condition()

    async def send_one(count: int) -> None:
        failed = await client.send(queue, [body] * count)
        if failed:
            raise BenchError(f"the SQS server refused {len(failed)} messages")

    def has_room(count: int) -> bool:
        return sent - done + count <= window

    async def produce() -> None:
        nonlocal sent
        sends: set[asyncio.Task[None]] = set()
        while sent < n:
            count = min(10, n - sent)
            async with room:
                await room.wait_for(functools.partial(has_room, count))
            sent += count
            task = asyncio.create_task(send_one(count))
            sends.add(task)
            task.add_done_callback(sends.discard)
        if sends:
            await asyncio.gather(*sends)

    async def consume() -> None:
        nonlocal done
        while done < n:
            messages = await client.receive(queue, 10, 1)
            if messages:
                await client.delete(queue, [m["ReceiptHandle"] for m in messages])
                async with room:
                    done += len(messages)
                    room.notify_all()

    start = time.perf_counter()
    await asyncio.wait_for(asyncio.gather(produce(), consume()), drain_timeout(n))
    return n / (time.perf_counter() - start)


# -- the drain ------------------------------------------------------------------------------


async def _drain(
    app: Any, conn: Any, o: BenchOptions, endpoint: str, queue: str, server_pid: int | None
) -> tuple[float, dict[str, float]]:
    from async_jobs.transports.sqs import SqsClient

    queued = await _unfinished(conn)
    if queued != o.jobs:
        raise BenchError(f"expected {o.jobs} queued jobs before the drain, found {queued}")
    await conn.execute("ANALYZE async_jobs")
    progress(
        f"drain: {o.jobs} jobs, one scheduler and one worker process, concurrency "
        f"{o.concurrency}, at most {o.window} dispatched"
    )
    env = _worker_env(o)
    env.update(
        ASYNC_JOBS_SQS_ENDPOINT_URL=endpoint,
        ASYNC_JOBS_SQS_QUEUE_DEFAULT=queue,
        ASYNC_JOBS_DEFAULT_MAX_CONCURRENT=str(o.window),
        # A stopping worker lets its polls end: short polls keep the rounds' ends short.
        ASYNC_JOBS_SQS_LONG_POLL_SECONDS="2",
        AWS_ACCESS_KEY_ID=os.environ["AWS_ACCESS_KEY_ID"],
        AWS_SECRET_ACCESS_KEY=os.environ["AWS_SECRET_ACCESS_KEY"],
    )
    scheduler_argv = [
        sys.executable,
        "-m",
        "async_jobs",
        "--log-level",
        "WARNING",
        "scheduler",
        "--handlers",
        HANDLERS_MODULE,
    ]
    async with (
        worker_process(
            "async-jobs worker", _worker_argv(o.concurrency), env=env, ready=READY_PREFIX
        ) as worker,
        worker_process(
            "async-jobs scheduler", scheduler_argv, env=env, ready=SCHEDULER_READY
        ) as scheduler,
    ):
        started = max(await worker.wait_ready(), await scheduler.wait_ready())
        pids = {"worker": [worker.pid], "scheduler": [scheduler.pid]}
        if server_pid is not None:
            pids["sqs server"] = [server_pid]
        with cpu_meter(pids) as cpu:
            finished = await wait_drained(conn, o, started, worker)
        scheduler.check_alive()
        client = SqsClient(app.sqs_config())
        await client.open()
        try:
            await _until_drained(client, queue)
        finally:
            await client.close()
    await check_all_succeeded(conn, o.jobs)
    return o.jobs / (finished - started), cpu()


async def _until_drained(client: SqsClient, queue: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while (depth := await client.depth(queue)) != (0, 0):
        if time.monotonic() > deadline:
            raise BenchError(f"the queue still holds messages (visible, in flight) = {depth}")
        await asyncio.sleep(0.1)


# -- CPU time from /proc --------------------------------------------------------------------


@contextlib.contextmanager
def cpu_meter(pids: dict[str, list[int]]) -> Iterator[Callable[[], dict[str, float]]]:
    """Each named part's CPU time while the block ran, as a share of one core, plus
    PostgreSQL's (every ``postgres`` process) and the machine's (share of all cores)."""
    tick = os.sysconf("SC_CLK_TCK")
    cores = os.cpu_count() or 1

    def sample() -> tuple[float, dict[str, float], float, float]:
        parts = {name: sum(_process_cpu(p) for p in group) for name, group in pids.items()}
        parts["postgresql"] = sum(_process_cpu(p) for p in _pids_named("postgres"))
        busy, total = _machine_cpu()
        return time.perf_counter(), parts, busy, total

    t0, before, busy0, total0 = sample()
    shares: dict[str, float] = {}
    try:
        yield lambda: shares
    finally:
        t1, after, busy1, total1 = sample()
        wall = max(t1 - t0, 1e-9)
        shares.update({k: (after[k] - before[k]) / tick / wall for k in after})
        shares["machine"] = (busy1 - busy0) / max(total1 - total0, 1) if cores else 0.0


def _process_cpu(pid: int) -> float:
    """utime + stime of a process and its waited-for children, in clock ticks (0 if gone)."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return float(sum(int(v) for v in fields[11:15]))


def _pids_named(name: str) -> list[int]:
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/comm", encoding="ascii") as f:
                    if f.read().strip() == name:
                        found.append(int(entry))
            except OSError:
                continue
    return found


def _machine_cpu() -> tuple[float, float]:
    with open("/proc/stat", encoding="ascii") as f:
        values = [int(v) for v in f.readline().split()[1:]]
    idle = values[3] + values[4]
    return float(sum(values) - idle), float(sum(values))
