"""``async-jobs``: parse the command line, build the app, call it. Nothing else lives here.

Exit codes: 0 done; 1 the work failed (store unreachable, a waited-for job failed);
2 bad usage, configuration or input; 3 ``enqueue --wait`` ran out of time.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import gc
import json
import logging
import os
import signal
import sys
from collections.abc import AsyncIterator, Callable, Coroutine, Iterator, Sequence
from types import FrameType
from typing import Any

import uvicorn

from async_jobs.app import EnqueueRequest, JobApp
from async_jobs.core.logs import (
    LOG_FORMATS,
    JsonFormatter,
    configure_logging,
    logging_options,
    uvicorn_log_config,
)
from async_jobs.core.settings import Settings, split_modules
from async_jobs.core.worker import WorkerConfig
from async_jobs.domain.errors import (
    AsyncJobsError,
    ConfigurationError,
    HandlerRegistrationError,
    InvalidJobError,
)
from async_jobs.domain.jobs import JobFilter, JobState, Priority

DEMO_HANDLERS = ("async_jobs.demo",)
log = logging.getLogger("async_jobs.cli")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="async-jobs", description=__doc__.splitlines()[0])
    _add_logging(parser, None)
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    serve = commands.add_parser("serve", help="API, dashboard and worker in one process")
    _add_http(serve)
    _add_worker_options(serve)

    api = commands.add_parser("api", help="the HTTP API only")
    _add_http(api)

    commands.add_parser("migrate", help="create or upgrade the store's schema")

    worker = commands.add_parser("worker", help="run jobs")
    _add_worker_options(worker)
    worker.add_argument(
        "--use-case",
        action="append",
        default=[],
        dest="use_cases",
        help="only this use case (repeatable)",
    )
    worker.add_argument("--burst", action="store_true", help="exit when nothing is left to do")
    worker.add_argument(
        "--grace", type=float, default=30.0, help="seconds running jobs get to finish after SIGTERM"
    )
    worker.add_argument(
        "--reap-interval",
        type=float,
        metavar="S",
        help="run the reaper about every S seconds (default: half a lease; 0: never)",
    )

    enqueue = commands.add_parser("enqueue", help="enqueue a job from the shell")
    enqueue.add_argument("type", help="job type")
    enqueue.add_argument("--payload", default="{}", help="JSON object")
    enqueue.add_argument("--use-case")
    enqueue.add_argument("--tenant", dest="tenant_id")
    enqueue.add_argument("--priority", choices=[p.value for p in Priority])
    enqueue.add_argument("--delay", type=float, help="seconds from now")
    enqueue.add_argument("--max-attempts", type=int)
    enqueue.add_argument("--idempotency-key")
    enqueue.add_argument(
        "--wait", type=float, metavar="S", help="wait up to S seconds and print the final job"
    )

    manage = commands.add_parser("jobs", help="look at and control jobs")
    actions = manage.add_subparsers(dest="action", required=True, metavar="ACTION")
    for action, aliases, text in (
        ("show", ["get"], "print one job"),
        ("cancel", [], "cancel a pending, queued or running job"),
        ("retry", [], "run a failed or cancelled job again"),
    ):
        one = actions.add_parser(action, aliases=aliases, help=text)
        one.add_argument("job_id", help="the job's id")
    listing = actions.add_parser("list", help="list jobs, newest first")
    listing.add_argument("--status", choices=[s.value for s in JobState])
    listing.add_argument("--use-case")
    listing.add_argument("--type")
    listing.add_argument("--tenant", dest="tenant_id")
    listing.add_argument("--limit", type=int, default=20)

    commands.add_parser("reap", help="hand back the jobs of dead workers now (see Reliability)")

    scheduler = commands.add_parser(
        "scheduler", help="reaper, expiry, periodic jobs and retention (one leads at a time)"
    )
    scheduler.add_argument(
        "--handlers", help="comma-separated modules whose @app.periodic jobs it enqueues"
    )

    stats = commands.add_parser("stats", help="counts, throughput, latencies (JSON)")
    stats.add_argument("--tenant", dest="tenant_id")

    cleanup = commands.add_parser("cleanup", help="delete terminal jobs older than an age")
    cleanup.add_argument(
        "--older-than",
        metavar="AGE",
        help="e.g. 24h, 30m, 7d, 90s (default: the configured retention per state)",
    )

    use_cases = commands.add_parser("use-cases", help="list, pause or resume use cases")
    use_case_actions = use_cases.add_subparsers(dest="action", required=True, metavar="ACTION")
    use_case_actions.add_parser("list", help="every use case and whether it is paused")
    for action, text in (("pause", "stop starting its jobs"), ("resume", "start them again")):
        use_case_actions.add_parser(action, help=text).add_argument("name")

    sqs = commands.add_parser("sqs", help="the sqs transport's queues")
    sqs_actions = sqs.add_subparsers(dest="action", required=True, metavar="ACTION")
    create = sqs_actions.add_parser(
        "create-queues",
        help="create each ASYNC_JOBS_SQS_QUEUE_<USE_CASE> queue and its dead-letter queue",
    )
    create.add_argument(
        "--handlers", help="modules whose handlers' max_attempts the dead-letter queues allow"
    )
    sqs_actions.add_parser("status", help="messages visible and in flight per queue (JSON)")

    bench = commands.add_parser("bench", help="measure enqueue, drain, latency and memory")
    from async_jobs import bench as bench_module

    bench_module.configure_parser(bench)
    commands.add_parser("health", help="readiness of store, schema and transport (exit 0 or 1)")
    for name in ("worker", "scheduler"):
        _add_metrics_port(commands.choices[name])
    for command in commands.choices.values():
        _add_logging(command, argparse.SUPPRESS)  # after the command too; the global stays
    return parser


def _add_logging(parser: argparse.ArgumentParser, default: Any) -> None:
    parser.add_argument(
        "--log-level",
        default=default,
        help="DEBUG, INFO, WARNING or ERROR (default: ASYNC_JOBS_LOG_LEVEL or INFO)",
    )
    parser.add_argument(
        "--log-format",
        choices=LOG_FORMATS,
        default=default,
        help="text or json: one JSON object per line (default: ASYNC_JOBS_LOG_FORMAT or text)",
    )


def _add_metrics_port(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--metrics-port",
        type=int,
        metavar="PORT",
        help="serve /metrics, /health and /health/ready on this port (default: "
        "ASYNC_JOBS_METRICS_PORT; off when neither is set)",
    )


def _add_http(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)


def _add_worker_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--handlers", help="comma-separated modules that define handlers")
    parser.add_argument("--concurrency", type=int, default=10, help="jobs run at once")


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        log_format, level = logging_options(args.log_format, args.log_level)
    except ConfigurationError as exc:
        print(f"async-jobs: error: {exc.message}", file=sys.stderr)
        return 2
    configure_logging(log_format, level)
    global _JSON_LINES
    _JSON_LINES = log_format == "json"
    # asyncpg logs every failed reconnect of its pool with a traceback; ours say it in a line.
    logging.getLogger("asyncpg.pool").setLevel(logging.ERROR)
    try:
        return _dispatch(args)
    except (ConfigurationError, InvalidJobError, HandlerRegistrationError) as exc:
        _error(exc.message)
        return 2
    except AsyncJobsError as exc:
        _error(exc.message)
        return 1
    except KeyboardInterrupt:
        return 130


_JSON_LINES = False  # set once by main(): start-up and error lines as JSON objects too


def announce(text: str) -> None:
    """A start-up line on stdout: as it reads, or one JSON object in JSON mode."""
    if _JSON_LINES:
        log_line = logging.LogRecord("async_jobs.cli", logging.INFO, "", 0, text, None, None)
        print(JsonFormatter().format(log_line), flush=True)
    else:
        print(text, flush=True)


def _error(message: str) -> None:
    if _JSON_LINES:
        log.error("async-jobs: error: %s", message)
    else:
        print(f"async-jobs: error: {message}", file=sys.stderr)


def _dispatch(args: argparse.Namespace) -> int:
    if args.command == "bench":
        from async_jobs import bench as bench_module

        return bench_module.run(args)
    settings = Settings.from_env()
    handlers = getattr(args, "handlers", None)
    if handlers is not None:
        settings = dataclasses.replace(settings, handlers=split_modules(handlers))
    if args.command == "serve" and not settings.handlers:
        settings = dataclasses.replace(settings, handlers=DEMO_HANDLERS)
    jobs = JobApp(settings=settings)
    if args.command in ("serve", "api"):
        return _serve(jobs, args)
    runner = {
        "migrate": _migrate,
        "worker": _worker,
        "enqueue": _enqueue,
        "jobs": _jobs,
        "reap": _reap,
        "scheduler": _scheduler,
        "stats": _stats,
        "cleanup": _cleanup,
        "use-cases": _use_cases,
        "sqs": _sqs,
        "health": _health,
    }[args.command]
    return run_async(runner(jobs, args))


def run_async(main: Coroutine[Any, Any, int]) -> int:
    """Run on uvloop when it is installed (a faster event loop), else on asyncio's."""
    try:
        import uvloop
    except ImportError:
        return asyncio.run(main)
    return uvloop.run(main)


def _serve(jobs: JobApp, args: argparse.Namespace) -> int:
    from async_jobs.api import create_api

    worker = scheduler = None
    if args.command == "serve":
        worker = _worker_config(jobs, args, burst=False, grace=30.0)
        scheduler = jobs.scheduler_config()
        asyncio.run(_check_store(jobs))
    app = create_api(jobs, worker=worker, scheduler=scheduler, migrate=args.command == "serve")
    config = uvicorn.Config(
        app,
        host=args.host,
        port=args.port,
        log_level=logging.getLogger().level,
        lifespan="on",
        access_log=False,
        log_config=uvicorn_log_config(),
    )
    announce(f"async-jobs {args.command}: http://{args.host}:{args.port}")
    _GracefulServer(config, on_second_signal=lambda: _stop_worker_now(app)).run()
    return 0


def _stop_worker_now(app: Any) -> None:
    worker = getattr(app.state, "worker", None)
    if worker is not None:
        worker.stop()
        worker.stop()


class _GracefulServer(uvicorn.Server):
    """uvicorn re-raises SIGTERM after shutting down, so the process would die of the signal;
    our contract is exit 0 after a graceful stop, and a second signal stops the worker at
    once."""

    def __init__(self, config: uvicorn.Config, on_second_signal: Callable[[], None]) -> None:
        super().__init__(config)
        self._on_second_signal = on_second_signal

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        signals = (signal.SIGINT, signal.SIGTERM)
        previous = {s: signal.signal(s, self._on_signal) for s in signals}
        try:
            yield
        finally:
            for signum, handler in previous.items():
                signal.signal(signum, handler)

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        if self.should_exit:
            self._on_second_signal()
        self.handle_exit(signum, frame)


async def _check_store(jobs: JobApp) -> None:
    """Fail fast with a clear message when the store does not answer at start-up."""
    async with jobs:
        await jobs.store.ping()


def _worker_config(
    jobs: JobApp, args: argparse.Namespace, *, burst: bool, grace: float
) -> WorkerConfig:
    if args.concurrency < 1:
        raise ConfigurationError("--concurrency must be at least 1")
    reap_interval = getattr(args, "reap_interval", None)
    if reap_interval is not None and reap_interval < 0:
        raise ConfigurationError("--reap-interval must not be negative")
    return WorkerConfig(
        concurrency=args.concurrency,
        use_cases=tuple(getattr(args, "use_cases", ())),
        burst=burst,
        grace_seconds=grace,
        lease_seconds=jobs.settings.lease_seconds,
        poll_interval_seconds=jobs.settings.poll_interval_seconds,
        reap_interval_seconds=reap_interval,
        limits=jobs.attempt_limits(),
    )


async def _migrate(jobs: JobApp, args: argparse.Namespace) -> int:
    async with jobs:
        applied = await jobs.migrate()
    print(f"applied: {', '.join(applied)}" if applied else "schema is up to date", flush=True)
    return 0


async def _worker(jobs: JobApp, args: argparse.Namespace) -> int:
    config = _worker_config(jobs, args, burst=args.burst, grace=args.grace)
    async with jobs:
        await jobs.store.ping()
        gc.freeze()  # start-up's objects live on: full collections need not walk them

        def ready() -> None:
            announce(
                f"async-jobs worker ready: id={config.worker_id} "
                f"concurrency={config.concurrency} types={','.join(jobs.registry.types)}"
            )

        worker = jobs.worker(config, on_ready=ready)
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, worker.stop)
        async with _ops_server(jobs, args, store_gauges=False):
            await worker.run()
    log.info("worker stopped after %d jobs", worker.processed)
    if worker.abandoned_threads:
        # Threads cannot be stopped, and the interpreter would wait for them at exit.
        log.warning("leaving %d handler threads that ignored the stop", worker.abandoned_threads)
        logging.shutdown()
        os._exit(0)
    return 0


async def _jobs(jobs: JobApp, args: argparse.Namespace) -> int:
    async with jobs:
        if args.action == "list":
            where = JobFilter(
                tenant_id=args.tenant_id,
                status=JobState(args.status) if args.status else None,
                use_case=args.use_case,
                type=args.type,
            )
            page = await jobs.list_jobs(where, args.limit)
            answer: Any = [job.to_json() for job in page.items]
        else:
            act = {
                "show": jobs.get_job,
                "get": jobs.get_job,
                "cancel": jobs.cancel,
                "retry": jobs.retry,
            }[args.action]
            answer = (await act(args.job_id)).to_json()
    print(json.dumps(answer, indent=2), flush=True)
    return 0


async def _reap(jobs: JobApp, args: argparse.Namespace) -> int:
    async with jobs:
        reaped = await jobs.reaper().run_once()
    print(f"reaped {len(reaped)} jobs whose worker was lost", flush=True)
    return 0


async def _scheduler(jobs: JobApp, args: argparse.Namespace) -> int:
    async with jobs:
        await jobs.store.ping()
        scheduler = jobs.scheduler()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, scheduler.stop)
        async with _ops_server(jobs, args, store_gauges=True):
            announce(f"async-jobs scheduler ready: id={scheduler.config.holder}")
            await scheduler.run()
    return 0


@contextlib.asynccontextmanager
async def _ops_server(
    jobs: JobApp, args: argparse.Namespace, *, store_gauges: bool
) -> AsyncIterator[None]:
    """``/metrics`` and the health probes on ``--metrics-port`` (or
    ``ASYNC_JOBS_METRICS_PORT``), while the block runs; nothing without either."""
    port = args.metrics_port
    if port is None and os.environ.get("ASYNC_JOBS_METRICS_PORT"):
        try:
            port = int(os.environ["ASYNC_JOBS_METRICS_PORT"])
        except ValueError:
            port = -1
    if port is None:
        yield
        return
    if not 0 <= port <= 65535:
        raise ConfigurationError("the metrics port must be a number from 0 to 65535")
    from async_jobs.api.ops import OpsServer

    if store_gauges:
        jobs.serve_store_gauges()
    host = os.environ.get("ASYNC_JOBS_METRICS_HOST") or "0.0.0.0"
    server = OpsServer(jobs, host, port)
    try:
        await server.start()
    except OSError as exc:
        raise ConfigurationError(f"cannot serve metrics on {host}:{port}: {exc}") from exc
    announce(f"async-jobs {args.command} metrics: http://{host}:{server.port}/metrics")
    try:
        yield
    finally:
        await server.close()


async def _health(jobs: JobApp, args: argparse.Namespace) -> int:
    async with jobs:
        readiness = await jobs.readiness()
    print(json.dumps(readiness.to_json(), indent=2), flush=True)
    return 0 if readiness.ok else 1


async def _stats(jobs: JobApp, args: argparse.Namespace) -> int:
    async with jobs:
        stats = await jobs.stats(args.tenant_id)
    print(json.dumps(stats.to_json(), indent=2), flush=True)
    return 0


async def _cleanup(jobs: JobApp, args: argparse.Namespace) -> int:
    seconds = None if args.older_than is None else parse_age(args.older_than)
    async with jobs:
        deleted = await jobs.cleanup(seconds)
    print(json.dumps({"deleted": sum(deleted.values()), "by_status": deleted}), flush=True)
    return 0


async def _use_cases(jobs: JobApp, args: argparse.Namespace) -> int:
    async with jobs:
        if args.action == "list":
            answer: Any = [u.to_json() for u in await jobs.use_cases()]
        else:
            change = jobs.pause if args.action == "pause" else jobs.resume
            answer = (await change(args.name)).to_json()
    print(json.dumps(answer, indent=2), flush=True)
    return 0


async def _sqs(jobs: JobApp, args: argparse.Namespace) -> int:
    from async_jobs.transports.sqs import SqsClient, create_queues

    config = jobs.sqs_config()
    if args.action == "create-queues":
        answer: Any = await create_queues(config, jobs.max_attempts_ceiling())
    else:
        client = SqsClient(config)
        await client.open()
        try:
            answer = {}
            for use_case, url in sorted(config.queues.items()):
                visible, in_flight = await client.depth(url)
                answer[use_case] = {"queue_url": url, "visible": visible, "in_flight": in_flight}
        finally:
            await client.close()
    print(json.dumps(answer, indent=2), flush=True)
    return 0


_AGE_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_age(text: str) -> float:
    """``"24h"`` -> 86400.0; a bare number is seconds."""
    unit = _AGE_UNITS.get(text[-1:].lower())
    try:
        number = float(text[:-1] if unit else text)
    except ValueError:
        number = -1.0
    if not 0 <= number < 1e9:
        raise InvalidJobError(
            f"--older-than takes an age such as 24h, 30m, 7d or 90s, not {text!r}"
        )
    return number * (unit or 1)


async def _enqueue(jobs: JobApp, args: argparse.Namespace) -> int:
    try:
        payload = json.loads(args.payload)
    except ValueError as exc:
        raise InvalidJobError(f"--payload is not valid JSON: {exc}") from exc
    request = EnqueueRequest(
        type=args.type,
        payload=payload,
        tenant_id=args.tenant_id,
        use_case=args.use_case,
        priority=args.priority,
        delay=args.delay,
        max_attempts=args.max_attempts,
        idempotency_key=args.idempotency_key,
    )
    async with jobs:
        job, _ = await jobs.enqueue_checked(request)
        if args.wait is not None:
            job = await jobs.wait_for(job.id, args.wait)
    print(json.dumps(job.to_json(), indent=2), flush=True)
    if args.wait is None or job.status is JobState.SUCCEEDED:
        return 0
    return 3 if not job.status.is_terminal else 1


if __name__ == "__main__":
    raise SystemExit(main())
