"""async-job-server: durable, fast, observable background jobs for Python.

The domain's names are imported at once; the others on first use (PEP 562, ``_LAZY``), so
that a service which only calls the API over HTTP (``from async_jobs import
AsyncJobsClient``) loads neither the stores, the transports nor their drivers.
"""

import importlib
from typing import TYPE_CHECKING, Any

from async_jobs.domain.errors import (
    AsyncJobsError,
    AuthTokenError,
    ConfigurationError,
    ForbiddenError,
    HandlerRegistrationError,
    IdempotencyConflictError,
    InvalidCursorError,
    InvalidJobError,
    InvalidTransitionError,
    JobNotFoundError,
    PayloadTooLargeError,
    QuotaExceededError,
    RemoteHttpError,
    SchemaMissingError,
    StoreError,
    StoreRefusedError,
    StoreUnavailableError,
    UnknownJobTypeError,
)
from async_jobs.domain.jobs import (
    AttemptRecord,
    Job,
    JobError,
    JobFilter,
    JobId,
    JobState,
    Priority,
    Progress,
    Reason,
)
from async_jobs.domain.requests import EnqueueRequest
from async_jobs.domain.retry import Backoff, BackoffKind
from async_jobs.domain.scheduling import (
    Leader,
    Limits,
    RetentionPolicy,
    Stats,
    TenantQuota,
    UseCaseState,
)

if TYPE_CHECKING:
    from async_jobs.app import JobApp
    from async_jobs.client import AsyncJobsClient, AsyncJobsHttpClient, JobsClient
    from async_jobs.core.context import JobContext
    from async_jobs.core.executor import AttemptLimits, NonRetryableError, RetryAfter
    from async_jobs.core.maintenance import PeriodicJob
    from async_jobs.core.registry import job, periodic
    from async_jobs.core.scheduler import Scheduler, SchedulerConfig
    from async_jobs.core.settings import Settings
    from async_jobs.core.worker import Worker, WorkerConfig
    from async_jobs.runner import run_scheduler_loop, run_worker_loop
    from async_jobs.stores.memory import MemoryStore

__all__ = [
    "AsyncJobsClient",
    "AsyncJobsError",
    "AsyncJobsHttpClient",
    "AttemptLimits",
    "AttemptRecord",
    "AuthTokenError",
    "Backoff",
    "BackoffKind",
    "ConfigurationError",
    "EnqueueRequest",
    "ForbiddenError",
    "HandlerRegistrationError",
    "IdempotencyConflictError",
    "InvalidCursorError",
    "InvalidJobError",
    "InvalidTransitionError",
    "Job",
    "JobApp",
    "JobContext",
    "JobError",
    "JobFilter",
    "JobId",
    "JobNotFoundError",
    "JobState",
    "JobsClient",
    "Leader",
    "Limits",
    "MemoryStore",
    "NonRetryableError",
    "PayloadTooLargeError",
    "PeriodicJob",
    "Priority",
    "Progress",
    "QuotaExceededError",
    "Reason",
    "RemoteHttpError",
    "RetentionPolicy",
    "RetryAfter",
    "Scheduler",
    "SchedulerConfig",
    "SchemaMissingError",
    "Settings",
    "Stats",
    "StoreError",
    "StoreRefusedError",
    "StoreUnavailableError",
    "TenantQuota",
    "UnknownJobTypeError",
    "UseCaseState",
    "Worker",
    "WorkerConfig",
    "job",
    "periodic",
    "run_scheduler_loop",
    "run_worker_loop",
]

# Names imported when first asked for, and the module each lives in.
_LAZY: dict[str, str] = {
    "AsyncJobsClient": "async_jobs.client",
    "AsyncJobsHttpClient": "async_jobs.client",
    "AttemptLimits": "async_jobs.core.executor",
    "JobApp": "async_jobs.app",
    "JobContext": "async_jobs.core.context",
    "JobsClient": "async_jobs.client",
    "MemoryStore": "async_jobs.stores.memory",
    "NonRetryableError": "async_jobs.core.executor",
    "PeriodicJob": "async_jobs.core.maintenance",
    "RetryAfter": "async_jobs.core.executor",
    "Scheduler": "async_jobs.core.scheduler",
    "SchedulerConfig": "async_jobs.core.scheduler",
    "Settings": "async_jobs.core.settings",
    "Worker": "async_jobs.core.worker",
    "WorkerConfig": "async_jobs.core.worker",
    "job": "async_jobs.core.registry",
    "periodic": "async_jobs.core.registry",
    "run_scheduler_loop": "async_jobs.runner",
    "run_worker_loop": "async_jobs.runner",
}


def __getattr__(name: str) -> Any:
    home = _LAZY.get(name)
    if home is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(home), name)
    globals()[name] = value  # found directly from now on
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
