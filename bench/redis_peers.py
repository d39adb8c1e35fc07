"""SAQ and streaQ, two asyncio job queues on Redis, measured by the shared peers harness.

    python bench/redis_peers.py ROW [--peers-dir DIR] [--out FILE] [--only enqueue,process,latency]

ROW is ``saq``, ``saq_uvloop``, ``streaq`` or ``streaq_tuned``. Run it with the Python of a venv
that has the two libraries (bench/README.md gives the command); the project's own venv does not.

This file measures nothing by itself. It imports the harness's ``common`` module from the peers
folder (``--peers-dir``, else ``PEERS_DIR``, else ``../shared/peers`` beside the project) and
hands one ``Peer`` subclass to ``common.main_cli``, as the harness's ``bench_arq.py`` and
``bench_celery.py`` do. So every number comes from the same code as arq's and Celery's, and the
JSON it writes (``--out``, default ``$PEERS_RESULTS/raw/ROW.json``) is read by the harness's
``aggregate.py`` with theirs. ``PEERS_RESULTS`` defaults to ``/tmp/redis-peers-results`` here, so
the worker logs do not land in the harness folder. ``PEERS_N``, ``PEERS_CONCURRENCY`` and
``PEERS_LAT_JOBS`` shrink a run, as for every peer.

What the harness measures, with N = 10,000 jobs that do nothing and take no arguments:

- enqueue: N jobs, one call each, awaited one after the other; then N in bulk calls of 1,000
  where the library has a bulk call;
- drain: N queued jobs, then ONE worker process at concurrency 10, and again at 50. The clock
  starts at the worker's ready signal (``common.worker_ready``) and stops when the driver,
  polling Redis, sees the last job finished;
- latency: an idle worker of concurrency 10; 300 jobs, 20 ms apart; from just before the
  enqueue call to the first line of the job (``common.stamp``);
- the worker's peak RSS and CPU.

Each library has its own Redis database on ``PEERS_REDIS_HOST``:``PEERS_REDIS_PORT``: SAQ 4,
streaQ 5 (``PEERS_SAQ_REDIS_DB``, ``PEERS_STREAQ_REDIS_DB``; arq uses 2 and Celery 3). The reset
before each scenario is a FLUSHDB. Logging is at WARNING, as for every peer.

The rows:

- ``saq``: SAQ 0.26.4 as shipped. ``Worker(queue, functions, concurrency=C)``, run the way the
  ``saq`` command runs it (``saq.worker.start``: a new asyncio loop, ``queue.connect()``,
  ``worker.start()``). Its ``startup`` hook sends the ready signal; SAQ calls it right before it
  starts its upkeep tasks and its C dequeue tasks. Every default is kept: each of the C tasks
  waits in BLMOVE from the queued list to the active list, jobs are kept 600 s after they end.
  The client is redis-py 5.3.1 with hiredis 3.5.0: SAQ documents ``saq[hiredis]`` as its install
  with the faster reply parser (README, "Install"; docs/getting_started.md), and the harness's
  venv has the same two packages, so arq and Celery parse with hiredis too. SAQ has no bulk
  enqueue: ``Queue.batch()`` only groups jobs to abort them together, and ``Queue.map()`` waits
  for the results. The batch column is empty, as for arq.
- ``saq_uvloop``: the same, with the worker on uvloop (``uvloop.new_event_loop()`` in place of
  asyncio's). The driver stays on asyncio, as in the harness's other ``_uvloop`` rows. SAQ's docs
  and source never mention uvloop; the one speed setting they document is hiredis, which both
  SAQ rows have. So this row is the harness's usual variant, not a setting SAQ recommends.
- ``streaq``: streaQ 7.2.0 as shipped. ``Worker(redis_url, concurrency=C)``: prefetch C (its
  buffer holds up to 2C stream entries), pickle, coredis, asyncio. It runs the way
  ``streaq run`` runs it (``Worker.run_sync``: ``anyio.run(worker.run_async)``), with two
  changes: the ready signal is sent when ``run_async`` reports that its consumers and its
  stream reader have started, and logging is at WARNING (the command logs two INFO lines per
  task). Enqueue: ``await noop.enqueue()``. Batch: ``worker.enqueue_many(tasks)``, one pipeline
  per 1,000. The drains are filled the same way.
- ``streaq_tuned``: the two settings of "Worker optimization" in streaQ's docs
  (docs/worker.rst): coredis's optimized mode (``coredis.Config.optimized = True``, which turns
  off coredis's run-time argument checks) and uvloop (``anyio_kwargs={"use_uvloop": True}``).
  streaQ's own benchmark (benchmarks/bench_streaq.py) uses exactly these two. Both were read in
  streaQ's repository at 6.4.1; 7.2.0 still takes ``anyio_kwargs``, and coredis 6.9 still has
  the switch. Optimized mode is process-wide and that benchmark sets it where it enqueues too,
  so the driver has it as well; uvloop is for the worker only. The other options stay at their
  defaults. The docs do not say that a larger ``prefetch`` is faster. They suggest a custom
  serializer "for speed or security", with json as the example, but json is slower than the
  default pickle for these small dicts (3.5 against 1.1 us for a dump and a load here).

How a finished job is counted, from what each queue writes to Redis:

- SAQ ends a job with one MULTI: LREM from the active list, ZREM from ``saq:default:incomplete``,
  SETEX of the job with status ``complete`` (kept 600 s); then a PUBLISH. While the incomplete
  set is not empty, the driver reports progress only. Once it is empty, the driver counts the
  job keys (``saq:job:default:*``, SCAN then MGET) whose stored status is one of SAQ's terminal
  ones: ``complete``, ``failed`` or ``aborted``. Not ``complete`` alone, because of SAQ's sweep.
  It runs once when the worker starts. A job that a dequeue task has just moved to the active
  list, but not yet marked active, looks stuck to it: the sweep aborts the job, waits for it to
  end, and then stores it as ``aborted`` (error ``swept``), though it ran. This happens when the
  sweep's script is not yet in Redis's script cache (the first SAQ worker after Redis starts):
  one smoke run here ended with 299 of 300 jobs ``complete``. Any job stored in another status
  than ``complete`` is printed and kept in the JSON (``config.not_complete``, per drain).
- streaQ ends a task with one MULTI: XACK and XDEL of its stream entry, a PUBLISH, SET of
  ``streaq:default:task:results:<id>`` (kept 300 s, the default ``ttl``) and ZADD of the id to
  ``streaq:default:index:results``. Progress is the ZCARD of that index. Once it holds N ids,
  the driver counts the result keys with SCAN, as the harness does for arq. A failed task would
  leave a result too; the no-op cannot fail, and a failure would show at ERROR in the worker's
  log (``$PEERS_RESULTS/worker_ROW_cC.log``).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import re
import sys
import tempfile
from collections import Counter
from pathlib import Path
from typing import Any

PROJECT = Path(__file__).resolve().parents[1]
DEFAULT_PEERS_DIR = PROJECT.parent / "shared" / "peers"
SCRIPT = str(Path(__file__).resolve())


def _peers_dir() -> Path:
    """--peers-dir, else PEERS_DIR, else ../shared/peers beside the project."""
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--peers-dir", default=os.environ.get("PEERS_DIR") or DEFAULT_PEERS_DIR)
    known, _ = pre.parse_known_args()
    return Path(known.peers_dir).resolve()


PEERS_DIR = _peers_dir()
if not (PEERS_DIR / "common.py").is_file():
    sys.exit(f"redis_peers: no common.py in {PEERS_DIR} (set --peers-dir or PEERS_DIR)")
os.environ["PEERS_DIR"] = str(PEERS_DIR)  # the worker processes import it from there too
# common writes the worker logs under PEERS_RESULTS, by default inside the harness folder
os.environ.setdefault("PEERS_RESULTS", str(Path(tempfile.gettempdir()) / "redis-peers-results"))
sys.path.insert(0, str(PEERS_DIR))

import common as C  # noqa: E402

SAQ_DB = int(os.environ.get("PEERS_SAQ_REDIS_DB", "4"))
STREAQ_DB = int(os.environ.get("PEERS_STREAQ_REDIS_DB", "5"))
SAQ_QUEUE = "default"
STREAQ_QUEUE = "default"
# a stored SAQ job is its to_dict() through json.dumps, whose default separators give this
SAQ_STATUS = re.compile(rb'"status": "(\w+)"')
SAQ_TERMINAL = (b"complete", b"failed", b"aborted")  # saq.job.TERMINAL_STATUSES


def _run_on(loop_name: str, coro: Any) -> None:
    """Run a coroutine to the end on a new asyncio or uvloop loop, as saq.worker.start does."""
    import asyncio

    if loop_name == "uvloop":
        import uvloop

        loop = uvloop.new_event_loop()
    else:
        loop = asyncio.new_event_loop()
    try:
        loop.run_until_complete(coro)
    finally:
        loop.close()


# -- SAQ -----------------------------------------------------------------------------------------


class SaqPeer(C.Peer):
    name = "saq"
    dist = "saq"
    loop = "asyncio"
    has_batch = False
    batch_note = (
        "no bulk enqueue API in SAQ (Queue.batch() groups jobs for abort, Queue.map() waits for "
        "results); each enqueue is one EVALSHA (SET job, ZADD incomplete, RPUSH queued)"
    )

    def __init__(self) -> None:
        self.phase = ""
        self.not_complete: dict[str, dict[str, int]] = {}

    def config(self) -> dict[str, Any]:
        return {
            "worker": {str(c): {"concurrency": c, "dequeue_timeout": 0.0} for c in C.CONCURRENCIES},
            "loop": self.loop,
            "redis_db": SAQ_DB,
            "client": "redis-py 5.3.1 + hiredis 3.5.0 (saq[hiredis])",
            "completion_check": (
                f"ZCARD saq:{SAQ_QUEUE}:incomplete == 0 (a job leaves it in the MULTI that "
                f"stores it finished), then count saq:job:{SAQ_QUEUE}:* keys whose stored "
                "status is terminal (complete, failed or aborted)"
            ),
            # filled in by count_completed: per drain, the jobs stored in another status than
            # complete (SAQ's sweep at worker start can store a job as aborted after it ran)
            "not_complete": self.not_complete,
        }

    async def setup(self) -> None:
        from saq import Queue

        self.queue = Queue.from_url(C.redis_url(SAQ_DB), name=SAQ_QUEUE)
        await self.queue.connect()
        self.redis = self.queue.redis
        self.enqueued = 0

    async def teardown(self) -> None:
        await self.queue.disconnect()

    async def reset(self) -> None:
        await self.redis.flushdb()
        self.enqueued = 0

    async def enqueue_single(self, n: int) -> None:
        enqueue = self.queue.enqueue
        for _ in range(n):
            await enqueue("noop")
        self.enqueued += n

    async def fill(self, n: int) -> None:
        # no bulk API; fill with the normal call (not timed)
        await self.enqueue_single(n)

    async def count_queued(self) -> int:
        return await self.queue.count("queued")

    async def count_completed(self) -> int:
        left = await self.queue.count("incomplete")
        if left:
            return max(0, self.enqueued - left - 1)  # progress only; never reports done early
        statuses: Counter[bytes] = Counter()
        cursor = 0
        while True:
            cursor, keys = await self.redis.scan(
                cursor=cursor, match=f"saq:job:{SAQ_QUEUE}:*", count=5000
            )
            if keys:
                for raw in await self.redis.mget(keys):
                    if raw and (found := SAQ_STATUS.search(raw)):
                        statuses[found.group(1)] += 1
            if not cursor:
                break
        ended = sum(statuses[s] for s in SAQ_TERMINAL)
        other = {s.decode(): n for s, n in statuses.items() if s != b"complete"}
        if other and ended >= self.enqueued and self.phase not in self.not_complete:
            print(f"[{self.name}] {self.phase}: not stored as complete: {other}", file=sys.stderr)
        if ended >= self.enqueued:
            # the dict config() returned: common writes it into the JSON at the end
            self.not_complete[self.phase] = other
        return ended

    async def enqueue_stamp(self, i: int) -> None:
        await self.queue.enqueue("stamp", i=i)

    def worker_argv(self, concurrency: int) -> list[str]:
        self.phase = f"process_c{concurrency}"  # count_completed is called in the drains only
        return [SCRIPT, self.name, "worker", "--concurrency", str(concurrency)]

    @classmethod
    def run_worker(cls, concurrency: int) -> None:
        import logging

        from saq import Queue, Worker

        logging.basicConfig(level=logging.WARNING)  # what the saq command sets by default

        async def noop(ctx: Any) -> None:
            return None

        async def stamp(ctx: Any, *, i: int) -> None:
            C.stamp(i)

        async def startup(ctx: Any) -> None:
            C.worker_ready()

        queue = Queue.from_url(C.redis_url(SAQ_DB), name=SAQ_QUEUE)
        worker = Worker(
            queue=queue,
            functions=[("noop", noop), ("stamp", stamp)],
            concurrency=concurrency,
            startup=startup,
        )

        async def main() -> None:  # saq.worker.start's worker_start
            try:
                await queue.connect()
                await worker.start()
            finally:
                await queue.disconnect()

        _run_on(cls.loop, main())


class SaqUvloopPeer(SaqPeer):
    name = "saq_uvloop"
    loop = "uvloop"


# -- streaQ --------------------------------------------------------------------------------------


def make_streaq(tuned: bool, concurrency: int = 16) -> tuple[Any, Any, Any]:
    """The streaQ worker object (the driver enqueues through one too) and its two tasks."""
    from streaq import Worker

    worker = Worker(
        redis_url=C.redis_url(STREAQ_DB),
        concurrency=concurrency,
        queue_name=STREAQ_QUEUE,
        anyio_kwargs={"use_uvloop": True} if tuned else None,
    )

    @worker.task(name="noop")
    async def noop() -> None:
        return None

    @worker.task(name="stamp")
    async def stamp(i: int) -> None:
        C.stamp(i)

    return worker, noop, stamp


def optimize_coredis() -> None:
    import coredis

    coredis.Config.optimized = True


class StreaqPeer(C.Peer):
    name = "streaq"
    dist = "streaq"
    tuned = False
    has_batch = True
    batch_note = (
        "worker.enqueue_many(tasks): one pipeline (no MULTI) of publish_task function calls "
        "(FCALL: SET task data, XADD) per 1,000"
    )

    def config(self) -> dict[str, Any]:
        prefix = f"streaq:{STREAQ_QUEUE}"
        return {
            "worker": {str(c): {"concurrency": c, "prefetch": c} for c in C.CONCURRENCIES},
            "loop": "uvloop" if self.tuned else "asyncio",
            "coredis_optimized": self.tuned,
            "redis_db": STREAQ_DB,
            "client": "coredis 6.9.0",
            "completion_check": (
                f"ZCARD {prefix}:index:results == N (ZADD in the MULTI that writes the "
                f"result), then count {prefix}:task:results:* keys"
            ),
        }

    async def setup(self) -> None:
        if self.tuned:
            optimize_coredis()
        self.worker, self.noop, self.stamp = make_streaq(self.tuned)
        self.stack = contextlib.AsyncExitStack()
        await self.stack.enter_async_context(self.worker)
        self.redis = self.worker.redis
        self.results_index = f"{self.worker.prefix}:index:results"
        self.results_match = f"{self.worker.results_key}*"
        self.enqueued = 0

    async def teardown(self) -> None:
        await self.stack.aclose()

    async def reset(self) -> None:
        await self.redis.flushdb()  # the Lua library survives: FLUSHDB keeps functions
        self.enqueued = 0

    async def enqueue_single(self, n: int) -> None:
        enqueue = self.noop.enqueue
        for _ in range(n):
            await enqueue()
        self.enqueued += n

    async def enqueue_batch(self, n: int, batch: int) -> None:
        for start in range(0, n, batch):
            k = min(batch, n - start)
            await self.worker.enqueue_many([self.noop.enqueue() for _ in range(k)])
        self.enqueued += n

    async def fill(self, n: int) -> None:
        await self.enqueue_batch(n, C.BATCH_SIZE)

    async def count_queued(self) -> int:
        return await self.worker.queue_size()

    async def count_completed(self) -> int:
        done = await self.redis.zcard(self.results_index)
        if done < self.enqueued:
            return done
        n = 0
        async for _ in self.redis.scan_iter(match=self.results_match, count=5000):
            n += 1
        return n

    async def enqueue_stamp(self, i: int) -> None:
        await self.stamp.enqueue(i)

    def worker_argv(self, concurrency: int) -> list[str]:
        return [SCRIPT, self.name, "worker", "--concurrency", str(concurrency)]

    @classmethod
    def run_worker(cls, concurrency: int) -> None:
        import logging

        import anyio

        logging.basicConfig(level=logging.WARNING)
        if cls.tuned:
            optimize_coredis()
        worker, _, _ = make_streaq(cls.tuned, concurrency)

        async def main() -> None:
            async with anyio.create_task_group() as tg:
                await tg.start(worker.run_async)  # returns once its loops are started
                C.worker_ready()

        # Worker.run_sync, with the ready signal added
        anyio.run(main, backend=worker.anyio_backend, backend_options=worker.anyio_kwargs)


class StreaqTunedPeer(StreaqPeer):
    name = "streaq_tuned"
    tuned = True


ROWS: dict[str, type[SaqPeer] | type[StreaqPeer]] = {
    p.name: p for p in (SaqPeer, SaqUvloopPeer, StreaqPeer, StreaqTunedPeer)
}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0],
        epilog="Other options (--out, --only) go to the harness's common.main_cli.",
    )
    parser.add_argument("row", choices=sorted(ROWS))
    parser.add_argument("--peers-dir", help=f"the harness folder (default {DEFAULT_PEERS_DIR})")
    args, rest = parser.parse_known_args()
    peer = ROWS[args.row]
    sys.argv = [sys.argv[0], *rest]
    C.main_cli(peer, peer.run_worker)


if __name__ == "__main__":
    main()
