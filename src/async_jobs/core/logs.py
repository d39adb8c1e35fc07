"""Logging: plain text or one JSON object per line, with the running job's fields.

``configure_logging("json", "INFO")`` makes every line the process writes (ours, the web
server's, a handler's own ``logging`` calls) one JSON object with ``time``, ``level``,
``logger`` and ``message``; inside a job also ``job_id``, ``attempt``, ``type``,
``use_case``, ``tenant_id``, ``worker_id`` and, when tracing, ``trace_id`` and ``span_id``.
The job's fields come from a context variable that the worker sets for each attempt (and
that a sync handler's thread inherits), so nothing has to be passed to the handler's logger.

Nothing here ever reads a job's payload, result or error, nor a token or secret: a field
is only what is listed above.
"""

from __future__ import annotations

import contextvars
import datetime
import json
import logging
import os
import sys
from collections.abc import Mapping
from typing import Any

from async_jobs.domain.errors import ConfigurationError

LOG_FORMATS = ("text", "json")
LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"

# The fields of the job whose attempt runs in this context (None outside jobs).
job_fields: contextvars.ContextVar[Mapping[str, Any] | None] = contextvars.ContextVar(
    "async_jobs_job_fields", default=None
)


class JsonFormatter(logging.Formatter):
    """One JSON object per record; an exception's traceback goes in ``exc_info``."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": datetime.datetime.fromtimestamp(record.created, datetime.UTC).isoformat(
                timespec="milliseconds"
            ),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        fields = job_fields.get()
        if fields:
            entry.update(fields)
        if record.exc_info:
            entry["exc_info"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str, ensure_ascii=False)


def logging_options(
    log_format: str | None, level: str | None, environ: Mapping[str, str] | None = None
) -> tuple[str, str]:
    """The format and level from flags, else ``ASYNC_JOBS_LOG_FORMAT`` /
    ``ASYNC_JOBS_LOG_LEVEL``, else text and INFO; anything else is a ``ConfigurationError``."""
    env = os.environ if environ is None else environ
    fmt = (log_format or env.get("ASYNC_JOBS_LOG_FORMAT") or "text").strip().lower()
    lvl = (level or env.get("ASYNC_JOBS_LOG_LEVEL") or "INFO").strip().upper()
    if fmt not in LOG_FORMATS:
        raise ConfigurationError(
            f"log format must be one of {', '.join(LOG_FORMATS)} "
            f"(--log-format, ASYNC_JOBS_LOG_FORMAT), not {fmt!r}"
        )
    if lvl not in LEVELS:
        raise ConfigurationError(
            f"log level must be one of {', '.join(LEVELS)} "
            f"(--log-level, ASYNC_JOBS_LOG_LEVEL), not {lvl!r}"
        )
    return fmt, lvl


_json_lines = False  # set by configure_logging: start-up lines as JSON objects too


def json_lines() -> bool:
    """Whether the process logs one JSON object per line."""
    return _json_lines


def announce(text: str) -> None:
    """A line an operator or a test waits for on stdout (``... ready: ...``): as it reads,
    or one JSON object when the logs are JSON."""
    if _json_lines:
        record = logging.LogRecord("async_jobs", logging.INFO, "", 0, text, None, None)
        text = JsonFormatter().format(record)
    # One write per line: the processes of ``worker --processes N`` share one stdout, and
    # ``print`` writes the text and its newline apart when unbuffered (PYTHONUNBUFFERED), so
    # two processes' lines could merge into one. A pipe takes a write of up to 4 KiB whole.
    sys.stdout.write(text + "\n")
    sys.stdout.flush()


def configure_logging(log_format: str, level: str) -> None:
    """Route every logger (the root, and uvicorn's own, which keep handlers of their own
    otherwise) to one stderr handler in the chosen format."""
    global _json_lines
    _json_lines = log_format == "json"
    handler = logging.StreamHandler(sys.stderr)
    if log_format == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter(TEXT_FORMAT))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level)
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):
        logger = logging.getLogger(name)
        logger.handlers.clear()
        logger.propagate = True
    logging.captureWarnings(True)


def uvicorn_log_config() -> dict[str, Any]:
    """A ``log_config`` for uvicorn that keeps the handlers set up here (its default
    replaces them with its own text ones)."""
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "loggers": {
            "uvicorn": {"propagate": True},
            "uvicorn.error": {"propagate": True},
            "uvicorn.access": {"propagate": True},
        },
    }


def fields_of_job(
    job_id: str, attempt: int, job_type: str, use_case: str, tenant_id: str, worker_id: str
) -> dict[str, Any]:
    return {
        "job_id": job_id,
        "attempt": attempt,
        "type": job_type,
        "use_case": use_case,
        "tenant_id": tenant_id,
        "worker_id": worker_id,
    }
