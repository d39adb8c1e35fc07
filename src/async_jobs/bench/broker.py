"""What the broker benches (``--transport sqs``, ``--transport redis``) share: a local server
started on a free port, the drain by one scheduler and one worker process with the CPU time
of each part read from ``/proc``, the wait until the broker is empty, and the naming of the
bottleneck.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import subprocess
import time
from collections.abc import Awaitable, Callable, Iterable, Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, TypeVar
from urllib.parse import urlsplit

from async_jobs.bench.harness import (
    READY_PREFIX,
    BenchError,
    BenchOptions,
    check_all_succeeded,
    check_queued,
    progress,
    scheduler_argv,
    wait_drained,
    worker_argv,
    worker_process,
)

if TYPE_CHECKING:
    import asyncpg

SCHEDULER_READY = "async-jobs scheduler ready"
SATURATED = 0.85  # of a core (a process) or of every core (the machine)
EMPTY_TIMEOUT_SECONDS = 30.0

T = TypeVar("T")


@contextlib.contextmanager
def local_server(
    name: str,
    command: Callable[[int], tuple[Sequence[str], Mapping[str, str]]],
    *,
    missing: str,
) -> Iterator[tuple[int, int]]:
    """A server started here on a free port of 127.0.0.1, stopped on the way out: (its port,
    its pid). ``command(port)``: its argv and the variables added to its environment;
    ``missing``: the complaint when the command is not there."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    argv, env = command(port)
    try:
        proc = subprocess.Popen(  # noqa: S603 - our own command line, no shell
            list(argv),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            env={**os.environ, **env},
        )
    except FileNotFoundError:
        raise BenchError(missing) from None
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                    break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise BenchError(f"{name} did not start") from None
                time.sleep(0.05)  # wait-ok: polling interval of a deadline-bound wait
        yield port, proc.pid
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


async def broker_drain(
    conn: asyncpg.Connection,
    o: BenchOptions,
    *,
    label: str,
    env: Mapping[str, str],
    server: tuple[str, int | None],
    emptied: Callable[[], Awaitable[None]],
) -> tuple[float, dict[str, float]]:
    """The N queued jobs run by ONE scheduler and ONE worker process; the clock starts when
    both printed their ready line and stops when the table shows all N ended; then
    ``emptied()`` waits for the broker to hold nothing. (jobs/s, each part's CPU share)."""
    await check_queued(conn, o.jobs)
    progress(
        f"{label}: {o.jobs} jobs, one scheduler and one worker process, concurrency "
        f"{o.concurrency}, at most {env.get('ASYNC_JOBS_DISPATCH_WINDOW') or o.window} dispatched"
    )
    async with (
        worker_process(
            "async-jobs worker", worker_argv(o.concurrency), env=env, ready=READY_PREFIX
        ) as worker,
        worker_process(
            "async-jobs scheduler", scheduler_argv(), env=env, ready=SCHEDULER_READY
        ) as scheduler,
    ):
        started = max(await worker.wait_ready(), await scheduler.wait_ready())
        pids = {"worker": [worker.pid], "scheduler": [scheduler.pid]}
        server_name, server_pid = server
        if server_pid is not None:
            pids[server_name] = [server_pid]
        with cpu_meter(pids, database_of(o.dsn)) as cpu:
            finished = await wait_drained(conn, o, started, worker)
        scheduler.check_alive()
        await emptied()
    await check_all_succeeded(conn, o.jobs)
    return o.jobs / (finished - started), cpu()


async def until_empty(
    look: Callable[[], Awaitable[T]], empty: Callable[[T], bool], complaint: str
) -> None:
    """Ask ``look()`` every 0.1 s until ``empty`` says so; ``complaint`` + the last answer
    after 30 s."""
    deadline = time.monotonic() + EMPTY_TIMEOUT_SECONDS
    while not empty(seen := await look()):
        if time.monotonic() > deadline:
            raise BenchError(f"{complaint}{seen}")
        await asyncio.sleep(0.1)  # wait-ok: polling interval of a deadline-bound wait


def database_of(dsn: str) -> str:
    """The database a DSN names (``postgres`` when it names none, as libpq defaults)."""
    return urlsplit(dsn).path.lstrip("/") or "postgres"


def bottleneck(cpu: dict[str, float]) -> str:
    """Name what limited the drain, from each part's share of a core (``machine``: of all
    cores together)."""
    parts = {k: v for k, v in cpu.items() if k not in ("machine", "postgresql_db")}
    busiest = max(parts, key=lambda k: parts[k]) if parts else None
    if busiest is not None and parts[busiest] >= SATURATED:
        return f"{busiest} ({parts[busiest]:.0%} of a core)"
    if cpu.get("machine", 0.0) >= SATURATED:
        return f"the machine's CPUs ({cpu['machine']:.0%} busy; busiest: {busiest})"
    return "no process saturated: round trips (latency between the parts), not CPU"


# -- CPU time from /proc --------------------------------------------------------------------


@contextlib.contextmanager
def cpu_meter(
    pids: dict[str, list[int]], database: str | None = None
) -> Iterator[Callable[[], dict[str, float]]]:
    """Each named part's CPU time while the block ran, as a share of one core, plus
    PostgreSQL's (every ``postgres`` process: on a shared machine, other users' too), with
    ``database`` that of the backends of that database alone (``postgresql_db``; the
    server's own processes, such as its WAL writer, are left out), and the machine's (share
    of all cores). A process counts by its own CPU time between the two samples; one that
    started meanwhile counts whole, one that ended meanwhile not at all (its last figure is
    gone with it)."""
    tick = os.sysconf("SC_CLK_TCK")

    def sample() -> tuple[float, dict[str, dict[int, float]], float, float]:
        groups = {name: _cpu_of(group) for name, group in pids.items()}
        postgres = _pids_named("postgres")
        groups["postgresql"] = _cpu_of(postgres)
        if database is not None:
            groups["postgresql_db"] = _cpu_of(p for p in postgres if _backend_of(p, database))
        busy, total = _machine_cpu()
        return time.perf_counter(), groups, busy, total

    t0, before, busy0, total0 = sample()
    shares: dict[str, float] = {}
    try:
        yield lambda: shares
    finally:
        t1, after, busy1, total1 = sample()
        wall = max(t1 - t0, 1e-9)
        for name, now in after.items():
            then = before.get(name, {})
            spent = sum(max(0.0, cpu - then.get(pid, 0.0)) for pid, cpu in now.items())
            shares[name] = spent / tick / wall
        shares["machine"] = (busy1 - busy0) / max(total1 - total0, 1)


def _cpu_of(pids: Iterable[int]) -> dict[int, float]:
    """The CPU time (clock ticks) of each process still there."""
    found = {}
    for pid in pids:
        cpu = _process_cpu(pid)
        if cpu is not None:
            found[pid] = cpu
    return found


def _process_cpu(pid: int) -> float | None:
    """utime + stime of a process and its waited-for children, in clock ticks (None if
    gone)."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return float(sum(int(v) for v in fields[11:15]))


def _backend_of(pid: int, database: str) -> bool:
    """Whether a ``postgres`` process is a backend of ``database``: its title reads
    ``postgres: [cluster: ]user database host(port) state``."""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            words = f.read().replace(b"\0", b" ").decode("utf-8", "replace").split()
    except OSError:
        return False
    if not words or words[0] != "postgres:":
        return False
    words = words[1:]
    if words and words[0].endswith(":"):  # the cluster's name (cluster_name)
        words = words[1:]
    return len(words) >= 2 and words[1] == database


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
