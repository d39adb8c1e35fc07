"""async-job-server: durable, fast, observable background jobs for Python."""

from async_jobs.app import EnqueueRequest, JobApp
from async_jobs.core.context import JobContext
from async_jobs.core.executor import AttemptLimits, NonRetryableError, RetryAfter
from async_jobs.core.registry import job
from async_jobs.core.settings import Settings
from async_jobs.core.worker import Worker, WorkerConfig
from async_jobs.domain.errors import (
    AsyncJobsError,
    ConfigurationError,
    HandlerRegistrationError,
    IdempotencyConflictError,
    InvalidCursorError,
    InvalidJobError,
    InvalidTransitionError,
    JobNotFoundError,
    PayloadTooLargeError,
    SchemaMissingError,
    StoreError,
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
from async_jobs.domain.retry import Backoff, BackoffKind
from async_jobs.stores.memory import MemoryStore

__all__ = [
    "AsyncJobsError",
    "AttemptLimits",
    "AttemptRecord",
    "Backoff",
    "BackoffKind",
    "ConfigurationError",
    "EnqueueRequest",
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
    "MemoryStore",
    "NonRetryableError",
    "PayloadTooLargeError",
    "Priority",
    "Progress",
    "Reason",
    "RetryAfter",
    "SchemaMissingError",
    "Settings",
    "StoreError",
    "StoreUnavailableError",
    "UnknownJobTypeError",
    "Worker",
    "WorkerConfig",
    "job",
]
