"""async-job-server: durable, fast, observable background jobs for Python."""

from async_jobs.app import EnqueueRequest, JobApp
from async_jobs.core.context import JobContext
from async_jobs.core.executor import NonRetryableError
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
    JobNotFoundError,
    PayloadTooLargeError,
    SchemaMissingError,
    StoreError,
    StoreUnavailableError,
    UnknownJobTypeError,
)
from async_jobs.domain.jobs import Job, JobError, JobFilter, JobId, JobState, Priority, Progress
from async_jobs.domain.retry import ExponentialBackoff
from async_jobs.stores.memory import MemoryStore

__all__ = [
    "AsyncJobsError",
    "ConfigurationError",
    "EnqueueRequest",
    "ExponentialBackoff",
    "HandlerRegistrationError",
    "IdempotencyConflictError",
    "InvalidCursorError",
    "InvalidJobError",
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
    "SchemaMissingError",
    "Settings",
    "StoreError",
    "StoreUnavailableError",
    "UnknownJobTypeError",
    "Worker",
    "WorkerConfig",
    "job",
]
