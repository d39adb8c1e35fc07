"""Starting a process: the checks that stop a configuration that cannot work, the start-up
line, the wait for the store, and the worker and scheduler loops that ``async-jobs worker``
and ``async-jobs scheduler`` run (and a container's own entry point may call:
``run_worker_loop()``, ``run_scheduler_loop()``).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import importlib
import logging
import signal
import sys
from collections.abc import Coroutine, Iterable
from typing import Any

from async_jobs.app import JobApp
from async_jobs.core import logs
from async_jobs.core.presence import package_version
from async_jobs.core.scheduler import Scheduler
from async_jobs.core.settings import MAX_SECONDS, PREFIX, Settings, mask_url
from async_jobs.core.worker import Worker, WorkerConfig
from async_jobs.domain.errors import (
    AsyncJobsError,
    ConfigurationError,
    HandlerRegistrationError,
    InvalidJobError,
    StoreUnavailableError,
)
from async_jobs.domain.jobs import DEFAULT_USE_CASE
from async_jobs.domain.retry import Backoff

log = logging.getLogger("async_jobs.runner")

STORE_RETRY = Backoff.exponential(0.2, cap_seconds=5.0, jitter=0.5)
# The roles that run a fleet: on the embedded SQLite store each such process would have a
# database of its own (right for ``serve`` and tests, rarely for anything else).
FLEET_ROLES = ("worker", "scheduler", "api")


# -- fail fast ----------------------------------------------------------------------------


def check_configuration(jobs: JobApp, role: str, worker: WorkerConfig | None = None) -> None:
    """Stop a process whose configuration cannot work, before it starts: ``role`` is
    ``worker``, ``scheduler``, ``api`` or ``serve``. Raises ``ConfigurationError``."""
    settings = jobs.settings
    if settings.transport == "sqs" and role != "api":
        _check_sqs(jobs, worker)
    if settings.transport == "redis" and role != "api":
        _check_redis(jobs, worker)


def _check_redis(jobs: JobApp, worker: WorkerConfig | None) -> None:
    from async_jobs.transports.redis import RedisConfig, require_redis

    require_redis()
    config = RedisConfig.from_settings(jobs.settings)
    missing = sorted(set(served_use_cases(jobs, worker)) - set(config.use_cases))
    if missing:
        raise ConfigurationError(
            f"the redis transport carries no stream for use case "
            f"{', '.join(map(repr, missing))}: add it to {PREFIX}REDIS_USE_CASES"
        )


def _check_sqs(jobs: JobApp, worker: WorkerConfig | None) -> None:
    try:
        importlib.import_module("aiobotocore.session")
    except ImportError as exc:
        raise ConfigurationError(
            f"{PREFIX}TRANSPORT=sqs needs aiobotocore, which cannot be imported ({exc}): "
            "pip install 'async-job-server[sqs]'"
        ) from None
    queues = jobs.settings.sqs_queues
    if not queues:
        raise ConfigurationError(
            f"{PREFIX}TRANSPORT=sqs but no queue is configured: set "
            f"{PREFIX}SQS_QUEUE_<USE_CASE>=<queue url> for each use case "
            f"(e.g. {PREFIX}SQS_QUEUE_DEFAULT)"
        )
    missing = sorted(set(served_use_cases(jobs, worker)) - set(queues))
    if missing:
        names = ", ".join(f"{PREFIX}SQS_QUEUE_{name.upper()}" for name in missing)
        raise ConfigurationError(
            f"the sqs transport has no queue for use case {', '.join(map(repr, missing))}: "
            f"set {names}"
        )
    jobs.sqs_config()  # the endpoint's and the queues' URLs, the numbers


def served_use_cases(jobs: JobApp, worker: WorkerConfig | None = None) -> list[str]:
    """The use cases a process must serve: a worker's ``--use-case`` list, else those of
    its handlers (``default`` for a handler that names none)."""
    if worker is not None and worker.use_cases:
        return sorted(set(worker.use_cases))
    return sorted({handler.use_case or DEFAULT_USE_CASE for handler in jobs.registry})


async def open_store(jobs: JobApp) -> None:
    """Open the app's store and ping it, retrying with jittered backoff for up to
    ``ASYNC_JOBS_STORE_WAIT_SECONDS`` (a database that starts with the process has time to
    come up); then give up with ``StoreUnavailableError``. Leaves the app open once."""
    loop = asyncio.get_running_loop()
    window = jobs.settings.store_wait_seconds
    deadline = loop.time() + window
    attempt = 0
    while True:
        try:
            await jobs.open()
        except StoreUnavailableError as exc:
            error = exc
        else:
            try:
                await jobs.store.ping()
                return
            except StoreUnavailableError as exc:
                await jobs.close()
                error = exc
        attempt += 1
        left = deadline - loop.time()
        if left <= 0:
            raise StoreUnavailableError(
                f"the store {mask_url(jobs.settings.db_dsn)} did not answer within {window:g} s "
                f"({PREFIX}STORE_WAIT_SECONDS): {error.message}"
            )
        log.warning("the store does not answer yet (%s); retrying", error.message)
        await asyncio.sleep(min(STORE_RETRY.delay(attempt), left))


# -- what a process says when it starts ---------------------------------------------------


def startup_line(
    jobs: JobApp, role: str, worker: WorkerConfig | None = None, **extra: object
) -> str:
    """One line with everything an operator checks first: version, role, store (password
    masked), transport, handler types, concurrency and the use-case limits that bound it."""
    settings = jobs.settings
    fields: dict[str, object] = {
        "version": package_version(),
        **extra,
        "store": mask_url(settings.db_dsn),
        "transport": settings.transport,
    }
    if len(jobs.registry):
        fields["types"] = ",".join(jobs.registry.types)
    if worker is not None:
        fields["concurrency"] = worker.concurrency
        fields["use_cases"] = ",".join(worker.use_cases) or "all"
        fields["limits"] = ",".join(
            f"{name}={jobs.limits.max_concurrent_for(name) or 'none'}"
            for name in served_use_cases(jobs, worker)
        )
    return " ".join(f"{key}={value}" for key, value in fields.items())


def startup_warnings(jobs: JobApp, role: str, worker: WorkerConfig | None = None) -> list[str]:
    """What an operator should know before trusting this process: an embedded SQLite store
    in a fleet process, a concurrency the use-case limits will not let run."""
    warnings = []
    if role in FLEET_ROLES and jobs.settings.db_dsn.startswith("sqlite:"):
        warnings.append(
            f"NOTICE: async-jobs {role} runs on the embedded SQLite store "
            f"{jobs.settings.db_dsn}: only processes on this machine sharing that file see its "
            f"jobs. For workers, schedulers and APIs in separate containers set "
            f"{PREFIX}DB_DSN=postgresql://..."
        )
    if worker is not None:
        bound = _concurrency_bound(jobs, served_use_cases(jobs, worker))
        if bound is not None and worker.concurrency > bound:
            warnings.append(
                f"WARNING: concurrency {worker.concurrency} but the use-case limits let at most "
                f"{bound} jobs of {', '.join(served_use_cases(jobs, worker))} run at once (across "
                f"all workers); raise {PREFIX}<USE_CASE>_MAX_CONCURRENT to use more"
            )
    return warnings


def _concurrency_bound(jobs: JobApp, use_cases: Iterable[str]) -> int | None:
    """The most jobs the use-case limits let run at once; None when one of them has no cap."""
    caps = [jobs.limits.max_concurrent_for(name) for name in use_cases]
    if any(cap is None for cap in caps):
        return None
    return sum(cap for cap in caps if cap is not None)


def warn_at_start(jobs: JobApp, role: str, worker: WorkerConfig | None = None) -> None:
    """Print the start-up warnings on stderr."""
    for warning in startup_warnings(jobs, role, worker):
        print(warning, file=sys.stderr, flush=True)


# -- the loops ----------------------------------------------------------------------------


def worker_config(
    jobs: JobApp,
    *,
    concurrency: int | None = None,
    use_cases: Iterable[str] | None = None,
    grace_seconds: float | None = None,
    burst: bool = False,
    reap_interval_seconds: float | None = None,
) -> WorkerConfig:
    """A worker's configuration: the arguments given, else the settings
    (``ASYNC_JOBS_WORKER_*``)."""
    s = jobs.settings
    concurrency = s.worker_concurrency if concurrency is None else concurrency
    if concurrency < 1:
        raise ConfigurationError("--concurrency must be at least 1")
    if reap_interval_seconds is not None and not 0 <= reap_interval_seconds <= MAX_SECONDS:
        raise ConfigurationError(f"--reap-interval must be a number from 0 to {MAX_SECONDS:.10g}")
    grace = s.worker_grace_seconds if grace_seconds is None else grace_seconds
    if not 0 <= grace <= MAX_SECONDS:
        raise ConfigurationError(f"--grace must be a number from 0 to {MAX_SECONDS:.10g}")
    return WorkerConfig(
        concurrency=concurrency,
        use_cases=tuple(use_cases) if use_cases else s.worker_use_cases,
        burst=burst,
        grace_seconds=grace,
        lease_seconds=s.lease_seconds,
        poll_interval_seconds=s.poll_interval_seconds,
        reap_interval_seconds=reap_interval_seconds,
        limits=jobs.attempt_limits(),
    )


async def serve_worker(
    jobs: JobApp, config: WorkerConfig, *, metrics_url: str | None = None
) -> Worker:
    """Run a worker until SIGTERM or SIGINT (burst mode: until nothing is left). Unless in
    burst mode it also stands for the chores' leadership, as a scheduler does: any mix of
    worker and scheduler processes has one leader. ``metrics_url``: where the process
    serves its metrics, for the ready line. Returns the stopped worker."""
    check_configuration(jobs, "worker", config)

    def ready() -> None:
        line = startup_line(jobs, "worker", config, id=config.worker_id)
        logs.announce(f"async-jobs worker ready: {line}{_metrics_field(metrics_url)}")

    worker = jobs.worker(config, on_ready=ready)
    warn_at_start(jobs, "worker", config)
    await open_store(jobs)
    try:
        chores = None if config.burst else _chores_of(jobs, config)
        stoppers = [worker.stop] + ([] if chores is None else [chores.stop])
        with _stopped_by_signals(*stoppers):
            async with _running(chores):
                await worker.run()
    finally:
        await jobs.close()
    return worker


async def serve_scheduler(jobs: JobApp, *, metrics_url: str | None = None) -> Scheduler:
    """Run a scheduler until SIGTERM or SIGINT; returns it stopped. ``metrics_url`` as for
    ``serve_worker``."""
    check_configuration(jobs, "scheduler")
    warn_at_start(jobs, "scheduler")
    await open_store(jobs)
    try:
        scheduler = jobs.scheduler()
        with _stopped_by_signals(scheduler.stop):
            line = startup_line(jobs, "scheduler", id=scheduler.config.holder.partition("/")[2])
            logs.announce(f"async-jobs scheduler ready: {line}{_metrics_field(metrics_url)}")
            await scheduler.run()
    finally:
        await jobs.close()
    return scheduler


def _metrics_field(url: str | None) -> str:
    return "" if url is None else f" metrics={url}"


def _chores_of(jobs: JobApp, worker: WorkerConfig) -> Scheduler:
    """The chores' candidate of a worker process. Its reaping stays with the worker's own
    reaper (unless that is off), which waits until the worker's held outcomes are written."""
    config = jobs.scheduler_config("worker", worker.worker_id)
    return jobs.scheduler(dataclasses.replace(config, reap=worker.reap_every == 0))


@contextlib.asynccontextmanager
async def _running(scheduler: Scheduler | None) -> Any:
    if scheduler is None:
        yield
        return
    task = asyncio.create_task(scheduler.run(), name="async-jobs-chores")
    try:
        yield
    finally:
        scheduler.stop()
        await task


@contextlib.contextmanager
def _stopped_by_signals(*stops: Any) -> Any:
    loop = asyncio.get_running_loop()

    def stop() -> None:
        for each in stops:
            each()

    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop)
    try:
        yield
    finally:
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(signum)


# -- entry points for code that brings its own ---------------------------------------------


def run_worker_loop(
    jobs: JobApp | None = None, config: WorkerConfig | None = None, **worker_options: Any
) -> None:
    """Run a worker until SIGTERM, built from the environment (``ASYNC_JOBS_*``: store,
    transport, handler modules, ``ASYNC_JOBS_WORKER_*``) unless ``jobs`` (an app with its
    handlers) or ``config`` are given; ``worker_options`` as ``worker_config()`` takes
    them. What a container's entry point calls: a configuration that cannot work ends the
    process with a message and exit status 2 (1: the store did not answer)."""

    async def main() -> None:
        app = jobs or JobApp(settings=Settings.from_env())
        await serve_worker(app, config or worker_config(app, **worker_options))

    _run_or_exit(main())


def run_scheduler_loop(jobs: JobApp | None = None) -> None:
    """Run a scheduler until SIGTERM, built from the environment unless ``jobs`` is given
    (its periodic jobs are enqueued too). Exits as ``run_worker_loop`` does on a
    configuration that cannot work."""

    async def main() -> None:
        await serve_scheduler(jobs or JobApp(settings=Settings.from_env()))

    _run_or_exit(main())


def _run_or_exit(main: Coroutine[Any, Any, None]) -> None:
    try:
        asyncio.run(main)
    except (ConfigurationError, InvalidJobError, HandlerRegistrationError) as exc:
        print(f"async-jobs: error: {exc.message}", file=sys.stderr, flush=True)
        raise SystemExit(2) from None
    except AsyncJobsError as exc:
        print(f"async-jobs: error: {exc.message}", file=sys.stderr, flush=True)
        raise SystemExit(1) from None


__all__ = [
    "check_configuration",
    "open_store",
    "run_scheduler_loop",
    "run_worker_loop",
    "serve_scheduler",
    "serve_worker",
    "startup_line",
    "worker_config",
]
