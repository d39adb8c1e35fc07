"""async-job-server: durable, fast, observable background jobs for Python."""

from async_jobs.app import EnqueueRequest, JobApp
from async_jobs.client import AsyncJobsClient, AsyncJobsHttpClient, JobsClient
from async_jobs.core.context import JobContext
from async_jobs.core.executor import AttemptLimits, NonRetryableError, RetryAfter
from async_jobs.core.maintenance import PeriodicJob
from async_jobs.core.registry import job, periodic
from async_jobs.core.scheduler import Scheduler, SchedulerConfig
from async_jobs.core.settings import Settings
from async_jobs.core.worker import Worker, WorkerConfig
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
from async_jobs.domain.scheduling import (
    Leader,
    Limits,
    RetentionPolicy,
    Stats,
    TenantQuota,
    UseCaseState,
)
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
