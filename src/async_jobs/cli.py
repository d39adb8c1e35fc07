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
import socket
import sys
import textwrap
from collections.abc import AsyncIterator, Callable, Coroutine, Iterator, Sequence
from types import FrameType
from typing import Any, NoReturn

import uvicorn

from async_jobs import runner
from async_jobs.app import EnqueueRequest, JobApp
from async_jobs.core import logs
from async_jobs.core.logs import (
    LOG_FORMATS,
    announce,
    configure_logging,
    json_lines,
    logging_options,
    uvicorn_log_config,
)
from async_jobs.core.settings import (
    Settings,
    duration_flag,
    metrics_port_flag,
    port_flag,
    split_modules,
)
from async_jobs.core.worker import WorkerConfig
from async_jobs.domain.errors import (
    AsyncJobsError,
    ConfigurationError,
    HandlerRegistrationError,
    InvalidJobError,
)
from async_jobs.domain.jobs import JobFilter, JobState, Priority
from async_jobs.supervisor import Supervisor, SupervisorConfig

DEMO_HANDLERS = ("async_jobs.demo",)
log = logging.getLogger("async_jobs.cli")

DESCRIPTION = """\
Durable background jobs for Python: enqueue jobs, run them in workers, and watch them
over HTTP. Jobs live in a store (PostgreSQL, or an embedded SQLite file by default).

Start here:  async-jobs serve   (API, worker and scheduler in one process, demo handlers)
A fleet:     async-jobs migrate; then any number of `api`, `worker` and `scheduler`
             processes sharing ASYNC_JOBS_DB_DSN=postgresql://...

Every command reads its configuration from ASYNC_JOBS_* variables (flags override them);
`async-jobs config` prints the effective configuration. `async-jobs COMMAND --help` says
what a command does, the variables it reads and an example."""

STORE_VARIABLES = "ASYNC_JOBS_DB_DSN, ASYNC_JOBS_STORE_WAIT_SECONDS"
COMMAND_DOCS: dict[str, tuple[str, str, str]] = {
    # command: (what it does, the variables it reads, an example)
    "serve": (
        "Run the HTTP API (with the dashboard at /dashboard), a worker and a scheduler in one "
        "process: the quick start and small deployments. With no configuration it uses the "
        "embedded SQLite store ./async_jobs.db and the demo handlers (echo, sleep, say_hello, "
        "fail), and creates the schema.",
        f"{STORE_VARIABLES}, ASYNC_JOBS_HANDLERS, ASYNC_JOBS_TRANSPORT, ASYNC_JOBS_API_HOST, "
        "ASYNC_JOBS_API_PORT, ASYNC_JOBS_API_PREFIX, ASYNC_JOBS_CORS_ORIGINS, "
        "ASYNC_JOBS_WORKER_CONCURRENCY, ASYNC_JOBS_ENQUEUE_AUTH_TOKEN, ASYNC_JOBS_API_TOKENS",
        "async-jobs serve --port 8000 --handlers myapp.jobs",
    ),
    "api": (
        "Run the HTTP API only (enqueue, read, cancel, retry, stats, the dashboard at "
        "/dashboard, /metrics); workers run elsewhere.",
        f"{STORE_VARIABLES}, ASYNC_JOBS_API_HOST, ASYNC_JOBS_API_PORT, ASYNC_JOBS_API_PREFIX, "
        "ASYNC_JOBS_CORS_ORIGINS, ASYNC_JOBS_ENQUEUE_AUTH_TOKEN, ASYNC_JOBS_API_TOKENS, "
        "ASYNC_JOBS_HANDLERS (to refuse unknown job types)",
        "ASYNC_JOBS_API_HOST=0.0.0.0 ASYNC_JOBS_API_PREFIX=/api/v1 async-jobs api",
    ),
    "migrate": (
        "Create or upgrade the store's schema; safe to run twice and from several processes.",
        STORE_VARIABLES,
        "ASYNC_JOBS_DB_DSN=postgresql://app@db/jobs async-jobs migrate",
    ),
    "worker": (
        "Run jobs of the registered handlers until SIGTERM (then running jobs get the grace "
        "period to finish). A worker also stands for the chores' leadership (webhooks, "
        "periodic jobs, retention, expiry, reaping): with or without scheduler processes, "
        "one process leads them.",
        f"{STORE_VARIABLES}, ASYNC_JOBS_HANDLERS, ASYNC_JOBS_TRANSPORT, "
        "ASYNC_JOBS_WORKER_CONCURRENCY, ASYNC_JOBS_WORKER_USE_CASES, "
        "ASYNC_JOBS_WORKER_GRACE_SECONDS, ASYNC_JOBS_<USE_CASE>_MAX_CONCURRENT, "
        "ASYNC_JOBS_SQS_QUEUE_<USE_CASE>",
        "ASYNC_JOBS_HANDLERS=myapp.jobs ASYNC_JOBS_WORKER_CONCURRENCY=20 async-jobs worker",
    ),
    "scheduler": (
        "Lead (or stand by for) the chores: reaping jobs of dead workers, expiry, periodic "
        "jobs, retention, webhooks, and dispatch to the sqs transport. Run several; one leads.",
        f"{STORE_VARIABLES}, ASYNC_JOBS_HANDLERS, ASYNC_JOBS_TRANSPORT, "
        "ASYNC_JOBS_PERIODIC_JOBS, ASYNC_JOBS_SCHEDULER_INTERVAL_SECONDS, "
        "ASYNC_JOBS_LEADER_LEASE_SECONDS, ASYNC_JOBS_RETAIN_*_HOURS, ASYNC_JOBS_WEBHOOK_*",
        "ASYNC_JOBS_HANDLERS=myapp.jobs async-jobs scheduler",
    ),
    "enqueue": (
        "Store one job from the shell and print it (JSON); --wait prints the finished job.",
        f"{STORE_VARIABLES}, ASYNC_JOBS_HANDLERS",
        "async-jobs enqueue echo --payload '{\"n\": 1}' --wait 10",
    ),
    "jobs": (
        "List, show, cancel or retry jobs (JSON).",
        STORE_VARIABLES,
        "async-jobs jobs list --status failed --limit 5",
    ),
    "reap": (
        "Hand back the jobs of dead workers now (the leader does it every round anyway).",
        STORE_VARIABLES,
        "async-jobs reap",
    ),
    "stats": (
        "Counts by state, throughput and latencies (JSON).",
        STORE_VARIABLES,
        "async-jobs stats --tenant tenant-a",
    ),
    "cleanup": (
        "Delete finished jobs older than an age (default: the retention per state).",
        f"{STORE_VARIABLES}, ASYNC_JOBS_RETAIN_*_HOURS",
        "async-jobs cleanup --older-than 7d",
    ),
    "use-cases": (
        "List use cases, or pause and resume starting their jobs (survives restarts).",
        STORE_VARIABLES,
        "async-jobs use-cases pause notifications",
    ),
    "sqs": (
        "Create the sqs transport's queues (local development) or show their depth.",
        "ASYNC_JOBS_SQS_QUEUE_<USE_CASE>, ASYNC_JOBS_SQS_ENDPOINT_URL, AWS_REGION",
        "async-jobs sqs create-queues --handlers myapp.jobs",
    ),
    "redis": (
        "Show the redis transport's streams: per use case, stream length, entries pending per "
        "consumer and the oldest entry's age.",
        "ASYNC_JOBS_REDIS_URL, ASYNC_JOBS_REDIS_PREFIX, ASYNC_JOBS_REDIS_USE_CASES",
        "ASYNC_JOBS_REDIS_URL=redis://127.0.0.1:6379 async-jobs redis info",
    ),
    "workers": (
        "List the live workers and schedulers (id, host, pid, concurrency, jobs held, last "
        "heartbeat, version) and who leads the chores.",
        STORE_VARIABLES,
        "async-jobs workers --json",
    ),
    "health": (
        "Check readiness: the store answers (with its latency), the schema is migrated and the "
        "transport's broker answers; prints JSON and exits 0 when ready, 1 when not.",
        f"{STORE_VARIABLES}, ASYNC_JOBS_TRANSPORT, ASYNC_JOBS_SQS_*, ASYNC_JOBS_REDIS_URL",
        "async-jobs health && echo ready",
    ),
    "config": (
        "Print the effective configuration (environment and defaults), secrets masked: "
        "tokens, webhook secrets and the passwords in the store DSN and the Redis URL.",
        "every ASYNC_JOBS_* variable (see the README's configuration table)",
        "ASYNC_JOBS_DB_DSN=postgresql://app:s3cret@db/jobs async-jobs config --format table",
    ),
    "bench": (
        "Measure enqueue, drain, latency and memory on your own database.",
        "ASYNC_JOBS_DB_DSN, ASYNC_JOBS_SQS_ENDPOINT_URL",
        "async-jobs bench --dsn postgresql://postgres@127.0.0.1/bench --jobs 10000",
    ),
}


def _command(commands: Any, name: str, **kwargs: Any) -> argparse.ArgumentParser:
    """A sub-command whose help says what it does, the variables it reads and an example."""
    does, variables, example = COMMAND_DOCS[name]
    parser: argparse.ArgumentParser = commands.add_parser(
        name,
        help=does.split(". ")[0].split(": ")[0].rstrip("."),
        description=does,
        epilog=textwrap.fill(f"reads: {variables}", 88, subsequent_indent="  ")
        + f"\n\nexample:\n  {example}",
        formatter_class=_HelpFormatter,
        **kwargs,
    )
    return parser


class _HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Keeps the epilog's lines; wraps the description."""

    def _fill_text(self, text: str, width: int, indent: str) -> str:
        if text.startswith("reads:"):
            return super()._fill_text(text, width, indent)
        return argparse.HelpFormatter._fill_text(self, text, width, indent)


class _Parser(argparse.ArgumentParser):
    """A bad flag says so as every other error does, ``async-jobs: error: ...`` (after the
    usage line), and exits 2. Sub-commands' parsers are of this class too."""

    def error(self, message: str) -> NoReturn:
        self.print_usage(sys.stderr)
        self.exit(2, f"async-jobs: error: {message}\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="async-jobs",
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _add_logging(parser, None)
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    serve = _command(commands, "serve")
    _add_http(serve)
    _add_worker_options(serve)

    api = _command(commands, "api")
    _add_http(api)

    _command(commands, "migrate")

    worker = _command(commands, "worker")
    _add_worker_options(worker)
    worker.add_argument(
        "--use-case",
        action="append",
        default=[],
        dest="use_cases",
        help="only this use case (repeatable; default: ASYNC_JOBS_WORKER_USE_CASES, else all)",
    )
    worker.add_argument("--burst", action="store_true", help="exit when nothing is left to do")
    worker.add_argument(
        "--processes",
        type=int,
        metavar="N",
        help="run N worker processes under this command, each with --concurrency "
        "(default: ASYNC_JOBS_WORKER_PROCESSES, else 1)",
    )
    worker.add_argument(
        "--grace",
        type=duration_flag,
        help="seconds running jobs get to finish after SIGTERM "
        "(default: ASYNC_JOBS_WORKER_GRACE_SECONDS, else 30)",
    )
    worker.add_argument(
        "--reap-interval",
        type=duration_flag,
        metavar="S",
        help="run the reaper about every S seconds (default: half a lease; 0: never)",
    )

    enqueue = _command(commands, "enqueue")
    enqueue.add_argument("type", help="job type")
    enqueue.add_argument("--payload", default="{}", help="JSON object")
    enqueue.add_argument("--use-case")
    enqueue.add_argument("--tenant", dest="tenant_id")
    enqueue.add_argument("--priority", choices=[p.value for p in Priority])
    enqueue.add_argument("--delay", type=duration_flag, help="seconds from now")
    enqueue.add_argument("--max-attempts", type=int)
    enqueue.add_argument("--idempotency-key")
    enqueue.add_argument(
        "--wait",
        type=duration_flag,
        metavar="S",
        help="wait up to S seconds and print the final job",
    )

    manage = _command(commands, "jobs")
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
    listing.add_argument("--priority", choices=[p.value for p in Priority])
    listing.add_argument("--limit", type=int, default=20)

    _command(commands, "reap")

    scheduler = _command(commands, "scheduler")
    scheduler.add_argument(
        "--handlers", help="comma-separated modules whose @app.periodic jobs it enqueues"
    )

    workers = _command(commands, "workers")
    workers.add_argument("--json", action="store_true", help="print JSON instead of a table")

    stats = _command(commands, "stats")
    stats.add_argument("--tenant", dest="tenant_id")
    stats.add_argument(
        "--no-counts",
        dest="counts",
        action="store_false",
        help="leave out the counts by use case, tenant and state, which read every job",
    )

    cleanup = _command(commands, "cleanup")
    cleanup.add_argument(
        "--older-than",
        metavar="AGE",
        help="e.g. 24h, 30m, 7d, 90s (default: the configured retention per state)",
    )

    use_cases = _command(commands, "use-cases")
    use_case_actions = use_cases.add_subparsers(dest="action", required=True, metavar="ACTION")
    use_case_actions.add_parser("list", help="every use case and whether it is paused")
    for action, text in (("pause", "stop starting its jobs"), ("resume", "start them again")):
        use_case_actions.add_parser(action, help=text).add_argument("name")

    sqs = _command(commands, "sqs")
    sqs_actions = sqs.add_subparsers(dest="action", required=True, metavar="ACTION")
    create = sqs_actions.add_parser(
        "create-queues",
        help="create each ASYNC_JOBS_SQS_QUEUE_<USE_CASE> queue and its dead-letter queue",
    )
    create.add_argument(
        "--handlers", help="modules whose handlers' max_attempts the dead-letter queues allow"
    )
    sqs_actions.add_parser("status", help="messages visible and in flight per queue (JSON)")

    config = _command(commands, "config")
    config.add_argument(
        "--format", choices=("json", "table"), default="json", help="JSON (default) or a table"
    )

    redis = _command(commands, "redis")
    redis_actions = redis.add_subparsers(dest="action", required=True, metavar="ACTION")
    redis_actions.add_parser(
        "info",
        help="per use case: stream length, entries pending per consumer, oldest entry's age (JSON)",
    )

    bench = _command(commands, "bench")
    from async_jobs import bench as bench_module

    bench_module.configure_parser(bench)
    _command(commands, "health")
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
        type=metrics_port_flag,
        metavar="PORT",
        help="serve /metrics, /health and /health/ready on this port (0: any free one; "
        "worker --processes N: process i on PORT+i; default: ASYNC_JOBS_METRICS_PORT; off "
        "when neither is set)",
    )


def _add_http(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--host", help="address to listen on (default: ASYNC_JOBS_API_HOST, else 127.0.0.1)"
    )
    parser.add_argument(
        "--port", type=port_flag, help="port to listen on (default: ASYNC_JOBS_API_PORT, else 8000)"
    )


def _add_worker_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--handlers",
        help="comma-separated modules that define handlers (default: ASYNC_JOBS_HANDLERS)",
    )
    parser.add_argument(
        "--concurrency",
        type=int,
        help="jobs run at once (default: ASYNC_JOBS_WORKER_CONCURRENCY, else 10)",
    )


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        log_format, level = logging_options(args.log_format, args.log_level)
    except ConfigurationError as exc:
        print(f"async-jobs: error: {exc.message}", file=sys.stderr)
        return 2
    configure_logging(log_format, level)
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


def _error(message: str) -> None:
    if logs.json_lines():
        log.error("async-jobs: error: %s", message)
    else:
        print(f"async-jobs: error: {message}", file=sys.stderr)


def _dispatch(args: argparse.Namespace) -> int:
    if args.command == "bench":
        from async_jobs import bench as bench_module

        return bench_module.run(args)
    settings = Settings.from_env(_environment(args))
    handlers = getattr(args, "handlers", None)
    if handlers is not None:
        settings = dataclasses.replace(settings, handlers=split_modules(handlers))
    if args.command == "serve" and not settings.handlers:
        settings = dataclasses.replace(settings, handlers=DEMO_HANDLERS)
    if args.command == "config":
        return _config(settings, args)
    if args.command == "worker":
        processes = settings.worker_processes if args.processes is None else args.processes
        if processes < 1:
            raise ConfigurationError("--processes must be at least 1")
        if processes > 1:
            return _supervise(settings, args, processes)
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
        "workers": _workers,
        "cleanup": _cleanup,
        "use-cases": _use_cases,
        "sqs": _sqs,
        "redis": _redis,
        "health": _health,
    }[args.command]
    return run_async(runner(jobs, args))


# Flags that stand for a variable, checked as they are parsed: given, each replaces its
# variable before the settings read the environment, so that a bad value of the variable
# cannot stop a command whose flag overrides it.
_FLAG_VARIABLES = {
    "log_format": "ASYNC_JOBS_LOG_FORMAT",
    "log_level": "ASYNC_JOBS_LOG_LEVEL",
    "host": "ASYNC_JOBS_API_HOST",
    "port": "ASYNC_JOBS_API_PORT",
    "grace": "ASYNC_JOBS_WORKER_GRACE_SECONDS",
    "metrics_port": "ASYNC_JOBS_METRICS_PORT",
}


def _environment(args: argparse.Namespace) -> dict[str, str]:
    """The environment with the variables the flags given override replaced by them."""
    env = dict(os.environ)
    for flag, variable in _FLAG_VARIABLES.items():
        value = getattr(args, flag, None)
        if value not in (None, ""):
            env[variable] = str(value)
    return env


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
        worker = runner.worker_config(jobs, concurrency=args.concurrency)
        scheduler = jobs.scheduler_config("serve")
    runner.check_configuration(jobs, args.command, worker)
    s = jobs.settings
    sockets = _listen(s.api_host, s.api_port)
    runner.warn_at_start(jobs, args.command, worker)
    asyncio.run(_check_store(jobs))
    app = create_api(jobs, worker=worker, scheduler=scheduler, migrate=args.command == "serve")
    config = uvicorn.Config(
        app,
        host=s.api_host,
        port=s.api_port,
        log_level=logging.getLogger().level,
        lifespan="on",
        access_log=False,
        log_config=uvicorn_log_config(),
    )
    line = runner.startup_line(jobs, args.command, worker)
    url = f"http://{s.api_host}:{s.api_port}{s.api_prefix}"
    server = _GracefulServer(
        config,
        on_second_signal=lambda: _stop_worker_now(app),
        ready_line=f"async-jobs {args.command}: {url} {line}",
    )
    server.run(sockets)
    return 0


def _listen(host: str, port: int) -> list[socket.socket]:
    """The API's listening sockets (one per address of ``host``, as uvicorn would bind), bound
    before anything else starts: a port in use or an address this machine does not have is
    a configuration error, not a server that starts, migrates and then cannot listen."""
    where = f"{host}:{port} (--host/--port, ASYNC_JOBS_API_HOST/ASYNC_JOBS_API_PORT)"
    sockets: list[socket.socket] = []
    try:
        found = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
        for family, kind, proto, _, address in dict.fromkeys(found):
            sock = socket.socket(family, kind, proto)
            sockets.append(sock)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if family == socket.AF_INET6:  # this socket for IPv6 only, as asyncio's
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            sock.bind(address)
    except (OSError, UnicodeError) as exc:  # UnicodeError: a host name IDNA cannot encode
        for sock in sockets:
            sock.close()
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else exc
        raise ConfigurationError(f"cannot listen on {where}: {reason}") from None
    return sockets


def _stop_worker_now(app: Any) -> None:
    worker = getattr(app.state, "worker", None)
    if worker is not None:
        worker.stop()
        worker.stop()


class _GracefulServer(uvicorn.Server):
    """uvicorn re-raises SIGTERM after shutting down, so the process would die of the signal;
    our contract is exit 0 after a graceful stop, and a second signal stops the worker at
    once. Its ready line is printed once the socket listens: a client that waits for the
    line may connect at once."""

    def __init__(
        self, config: uvicorn.Config, on_second_signal: Callable[[], None], ready_line: str
    ) -> None:
        super().__init__(config)
        self._on_second_signal = on_second_signal
        self._ready_line = ready_line

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets)
        if self.started:
            announce(self._ready_line)

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
        # The dashboard's event streams end at their next tick (uvicorn waits for them).
        state = getattr(self.config.app, "state", None)
        if state is not None:
            state.async_jobs_stopping = True
        self.handle_exit(signum, frame)


async def _check_store(jobs: JobApp) -> None:
    """Fail fast with a clear message when the store does not answer at start-up (after
    ``ASYNC_JOBS_STORE_WAIT_SECONDS`` of retries)."""
    await runner.open_store(jobs)
    await jobs.close()


async def _migrate(jobs: JobApp, args: argparse.Namespace) -> int:
    async with jobs:
        applied = await jobs.migrate()
    print(f"applied: {', '.join(applied)}" if applied else "schema is up to date", flush=True)
    return 0


def _worker_config(jobs: JobApp, args: argparse.Namespace) -> WorkerConfig:
    """The options of ``async-jobs worker`` (one process, or each of ``--processes N``)."""
    return runner.worker_config(
        jobs,
        concurrency=args.concurrency,
        use_cases=args.use_cases,
        grace_seconds=args.grace,
        burst=args.burst,
        reap_interval_seconds=args.reap_interval,
    )


async def _worker(jobs: JobApp, args: argparse.Namespace) -> int:
    config = _worker_config(jobs, args)
    gc.freeze()  # start-up's objects live on: full collections need not walk them
    async with _ops_server(jobs, args, store_gauges=False) as metrics:
        worker = await runner.serve_worker(jobs, config, metrics_url=metrics)
    log.info("worker stopped after %d jobs", worker.processed)
    if worker.abandoned_threads:
        # Threads cannot be stopped, and the interpreter would wait for them at exit.
        log.warning("leaving %d handler threads that ignored the stop", worker.abandoned_threads)
        logging.shutdown()
        os._exit(0)
    return 0


def _supervise(settings: Settings, args: argparse.Namespace, processes: int) -> int:
    """``worker --processes N``: N single workers with the same options (see supervisor)."""
    jobs = JobApp(settings=settings)
    worker = _worker_config(jobs, args)  # bad options: stop here
    asyncio.run(_check_store(jobs))
    command = [sys.executable, "-m", "async_jobs"]
    for flag, value in (("--log-level", args.log_level), ("--log-format", args.log_format)):
        if value:  # else the children read the same environment
            command += [flag, value]
    command.append("worker")
    command += ["--processes", "1", "--concurrency", str(worker.concurrency)]
    command += ["--grace", str(worker.grace_seconds)]
    if settings.handlers:
        command += ["--handlers", ",".join(settings.handlers)]
    for use_case in worker.use_cases:
        command += ["--use-case", use_case]
    if args.burst:
        command.append("--burst")
    if args.reap_interval is not None:
        command += ["--reap-interval", str(args.reap_interval)]
    ports = _metrics_ports(settings, processes)
    config = SupervisorConfig(
        processes,
        command,
        slot_arguments=[["--metrics-port", str(port)] for port in ports],
        grace_seconds=worker.grace_seconds,
    )
    log.info("starting %d worker processes", processes)
    return asyncio.run(Supervisor(config).run())


def _metrics_ports(settings: Settings, processes: int) -> list[int]:
    """The metrics port of each of ``worker --processes N``: P, P+1, ... P+N-1 for a port P
    (``--metrics-port`` or ``ASYNC_JOBS_METRICS_PORT``), as one port serves one process; 0
    for each with 0 (any free port); none without a port."""
    port = settings.metrics_port  # the flag's value, when given (_environment)
    if port is None:
        return []
    if port == 0:
        return [0] * processes
    if port + processes - 1 > 65535:
        raise ConfigurationError(
            f"--processes {processes} needs the metrics ports {port} to {port + processes - 1} "
            "(one per process), past 65535: choose a lower --metrics-port "
            "(or ASYNC_JOBS_METRICS_PORT)"
        )
    return [port + slot for slot in range(processes)]


async def _jobs(jobs: JobApp, args: argparse.Namespace) -> int:
    async with jobs:
        if args.action == "list":
            where = JobFilter(
                tenant_id=args.tenant_id,
                status=JobState(args.status) if args.status else None,
                use_case=args.use_case,
                type=args.type,
                priority=Priority(args.priority) if args.priority else None,
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
    _print_result(answer)
    return 0


def _print_result(answer: Any) -> None:
    """A command's result on stdout: indented for people, or one line when the logs are JSON
    lines (``--log-format json``), so that a log collector reads each result as one record."""
    text = json.dumps(answer) if json_lines() else json.dumps(answer, indent=2)
    print(text, flush=True)


async def _reap(jobs: JobApp, args: argparse.Namespace) -> int:
    async with jobs:
        reaped = await jobs.reaper().run_once()
    print(f"reaped {len(reaped)} jobs whose worker was lost", flush=True)
    return 0


async def _scheduler(jobs: JobApp, args: argparse.Namespace) -> int:
    async with _ops_server(jobs, args, store_gauges=True) as metrics:
        await runner.serve_scheduler(jobs, metrics_url=metrics)
    return 0


def _config(settings: Settings, args: argparse.Namespace) -> int:
    shown = settings.to_public_json()
    if args.format == "json":
        print(json.dumps(shown, indent=2, sort_keys=True), flush=True)
        return 0
    width = max(map(len, shown))
    for key in sorted(shown):
        value = shown[key]
        text = value if isinstance(value, str) else json.dumps(value, sort_keys=True)
        print(f"{key:<{width}}  {text}", flush=True)
    return 0


@contextlib.asynccontextmanager
async def _ops_server(
    jobs: JobApp, args: argparse.Namespace, *, store_gauges: bool
) -> AsyncIterator[str | None]:
    """``/metrics`` and the health probes on ``--metrics-port`` (or
    ``ASYNC_JOBS_METRICS_PORT``), while the block runs; nothing without either. Yields the
    metrics URL (None: none)."""
    port = jobs.settings.metrics_port  # the flag's value, when given (_environment)
    if port is None:
        yield None
        return
    from async_jobs.api.ops import OpsServer

    if store_gauges:
        jobs.serve_store_gauges()
    host = jobs.settings.metrics_host
    server = OpsServer(jobs, host, port)
    try:
        await server.start()
    except OSError as exc:
        raise ConfigurationError(f"cannot serve metrics on {host}:{port}: {exc}") from exc
    url = f"http://{host}:{server.port}/metrics"
    announce(f"async-jobs {args.command} metrics: {url}")
    try:
        yield url
    finally:
        await server.close()


async def _health(jobs: JobApp, args: argparse.Namespace) -> int:
    async with jobs:
        readiness = await jobs.readiness()
    _print_result(readiness.to_json())
    return 0 if readiness.ok else 1


async def _stats(jobs: JobApp, args: argparse.Namespace) -> int:
    async with jobs:
        stats = await jobs.stats(args.tenant_id, with_counts=args.counts)
    _print_result(stats.to_json())
    return 0


async def _workers(jobs: JobApp, args: argparse.Namespace) -> int:
    async with jobs:
        processes, leader = await jobs.processes()
    rows = [p.to_json(leader) for p in processes]
    if args.json:
        lead = leader.to_json() if leader is not None else None
        _print_result({"processes": rows, "leader": lead})
        return 0
    header = ("KIND", "ID", "HOST", "PID", "CONC", "HELD", "HEARTBEAT", "VERSION", "USE CASES")
    table = [header] + [
        (
            f"{r['kind']} (leads)" if r["leads"] else r["kind"],
            r["id"],
            r["host"],
            str(r["pid"]),
            str(r["concurrency"]),
            str(r["jobs_held"]),
            r["heartbeat_at"][:19],
            r["version"],
            ",".join(r["use_cases"]) or "*",
        )
        for r in rows
    ]
    widths = [max(len(row[i]) for row in table) for i in range(len(header))]
    for row in table:
        print("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)))
    if not rows:
        print("no live worker or scheduler", flush=True)
    if leader is not None:
        print(f"chores led by {leader.process_role} {leader.process_id}", flush=True)
    else:
        print("nobody leads the chores now", flush=True)
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
    _print_result(answer)
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
    _print_result(answer)
    return 0


async def _redis(jobs: JobApp, args: argparse.Namespace) -> int:
    from async_jobs.transports.redis import RedisConfig, info

    answer = await info(RedisConfig.from_settings(jobs.settings))
    _print_result(answer)
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
    _print_result(job.to_json())
    if args.wait is None or job.status is JobState.SUCCEEDED:
        return 0
    return 3 if not job.status.is_terminal else 1


if __name__ == "__main__":
    raise SystemExit(main())
