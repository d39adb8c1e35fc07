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
import functools
import logging
import os
import shutil
import statistics
import sys
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from async_jobs.bench.broker import bottleneck, broker_drain, local_server, until_empty
from async_jobs.bench.harness import (
    BenchError,
    BenchOptions,
    BenchResult,
    base_settings,
    drain_timeout,
    enqueue_batch,
    opened,
    prepared,
    progress,
    worker_env,
)
from async_jobs.bench.scale import truncate

if TYPE_CHECKING:
    from async_jobs.transports.sqs import SqsClient

ACCOUNT = "123456789012"  # the account id local SQS servers put in queue URLs


async def bench_sqs(o: BenchOptions) -> BenchResult:
    from async_jobs.core.settings import Settings

    logging.getLogger("aiobotocore.credentials").setLevel(logging.WARNING)  # said per client
    await prepared(o)
    with _sqs_server(o.sqs_endpoint_url, o.sqs_server) as (endpoint, server_pid):
        _default_credentials()
        started_here = f" ({o.sqs_server}, started here)" if server_pid else ""
        progress(f"SQS server {endpoint}{started_here}")
        queue = await _create_queue(endpoint, f"bench-jobs-{uuid.uuid4().hex[:8]}")
        settings = Settings(
            db_dsn=o.dsn,
            transport="sqs",
            sqs_endpoint_url=endpoint,
            sqs_queues={"default": queue},
            max_concurrent={"default": o.window},
        )
        async with opened(o, settings) as (conn, app, pg_version):
            raws: list[float] = []
            drains: list[tuple[float, dict[str, float]]] = []
            # Rounds alternate which goes first: the machine's speed drifts as it runs.
            for round_no in range(o.rounds):
                if round_no % 2 == 0:
                    raws.append(await _raw_rate(app, endpoint, o))
                await truncate(conn)
                await enqueue_batch(app, o.jobs, o.batch_size)
                drains.append(await _drain(app, conn, o, endpoint, queue, server_pid))
                await truncate(conn)
                if round_no % 2 == 1:
                    raws.append(await _raw_rate(app, endpoint, o))
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


# -- the SQS server -------------------------------------------------------------------------


@contextmanager
def _sqs_server(endpoint: str | None, kind: str) -> Iterator[tuple[str, int | None]]:
    """The given endpoint, or a server of ``kind`` (moto, fauxqs) started here on a free
    port: (url, its pid)."""
    if endpoint:
        yield endpoint, None
        return
    with local_server(
        f"the {kind} SQS server",
        lambda port: _server_command(kind, port),
        missing=f"the {kind} SQS server is not installed; or give --sqs-endpoint-url",
    ) as (port, pid):
        yield f"http://127.0.0.1:{port}", pid


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

    env = worker_env(o)
    env.update(
        ASYNC_JOBS_SQS_ENDPOINT_URL=endpoint,
        ASYNC_JOBS_SQS_QUEUE_DEFAULT=queue,
        ASYNC_JOBS_DEFAULT_MAX_CONCURRENT=str(o.window),
        # A stopping worker lets its polls end: short polls keep the rounds' ends short.
        ASYNC_JOBS_SQS_LONG_POLL_SECONDS="2",
        AWS_ACCESS_KEY_ID=os.environ["AWS_ACCESS_KEY_ID"],
        AWS_SECRET_ACCESS_KEY=os.environ["AWS_SECRET_ACCESS_KEY"],
    )

    async def emptied() -> None:
        client = SqsClient(app.sqs_config())
        await client.open()
        try:
            await until_empty(
                lambda: client.depth(queue),
                lambda depth: depth == (0, 0),
                "the queue still holds messages (visible, in flight) = ",
            )
        finally:
            await client.close()

    return await broker_drain(
        conn, o, label="drain", env=env, server=("sqs server", server_pid), emptied=emptied
    )
