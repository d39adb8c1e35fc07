"""async-job-server: durable, fast, observable background jobs for Python."""

from async_jobs.app import EnqueueRequest, JobApp
from async_jobs.core.context import JobContext
from async_jobs.core.executor import AttemptLimits, NonRetryableError, RetryAfter
from async_jobs.core.maintenance import PeriodicJob
from async_jobs.core.registry import job, periodic
from async_jobs.core.scheduler import Scheduler, SchedulerConfig
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
    QuotaExceededError,
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
from async_jobs.domain.scheduling import Limits, RetentionPolicy, Stats, TenantQuota, UseCaseState
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
    "Limits",
    "MemoryStore",
    "NonRetryableError",
    "PayloadTooLargeError",
    "PeriodicJob",
    "Priority",
    "Progress",
    "QuotaExceededError",
    "Reason",
    "RetentionPolicy",
    "RetryAfter",
    "Scheduler",
    "SchedulerConfig",
    "SchemaMissingError",
    "Settings",
    "Stats",
    "StoreError",
    "StoreUnavailableError",
    "TenantQuota",
    "UnknownJobTypeError",
    "UseCaseState",
    "Worker",
    "WorkerConfig",
    "job",
    "periodic",
]
