-- The scheduler: per-use-case concurrency and pausing, tenant quotas and rate buckets, fair
-- turns between tenants, job expiry, retention, leadership, periodic jobs. Mirrors the
-- PostgreSQL migration of the same name; times are REAL unix epoch seconds, as everywhere.

ALTER TABLE async_jobs ADD COLUMN expires_at REAL;

-- The claim walks pending jobs per use case and tenant, each group in its own order (then
-- rowid, which ends every index: jobs alike start in the order they came); the leading
-- (use_case, tenant_id) also lets it list the groups by skip scans, and max_pending count a
-- tenant's pending jobs in a use case.
DROP INDEX async_jobs_claimable;
CREATE INDEX async_jobs_claimable
    ON async_jobs (use_case, tenant_id, priority_rank, deadline_at, run_at)
    WHERE status = 'pending';

-- Jobs holding a slot, counted per use case and tenant by every claim (and scanned by the
-- reaper: few, as every use case is capped). lease_expires_at is in no index any more, so
-- claims, outcomes and lease renewals keep one index fewer up to date.
DROP INDEX async_jobs_running_lease;
CREATE INDEX async_jobs_active
    ON async_jobs (use_case, tenant_id) WHERE status IN ('queued', 'running');

-- Waiting jobs that may expire, for expire_jobs.
CREATE INDEX async_jobs_expiring
    ON async_jobs (expires_at) WHERE expires_at IS NOT NULL AND status IN ('pending', 'queued');

-- Retention deletes one terminal state at a time, oldest first; stats read the last hour.
CREATE INDEX async_jobs_finished
    ON async_jobs (status, finished_at) WHERE finished_at IS NOT NULL;

-- A paused use case is not dispatched; the row outlives restarts.
CREATE TABLE async_jobs_use_cases (
    name       TEXT NOT NULL PRIMARY KEY,
    paused     INTEGER NOT NULL DEFAULT 0 CHECK (paused IN (0, 1)),
    updated_at REAL NOT NULL
) STRICT;

-- One token bucket per tenant and use case with a max_per_second quota, refilled lazily:
-- the tokens now are the stored ones plus the rate times the time since refilled_at.
CREATE TABLE async_jobs_rate_buckets (
    tenant_id   TEXT NOT NULL,
    use_case    TEXT NOT NULL,
    tokens      REAL NOT NULL,
    refilled_at REAL NOT NULL,
    PRIMARY KEY (tenant_id, use_case)
) STRICT;

-- Who leads a role (the scheduler) until when.
CREATE TABLE async_jobs_leaders (
    role       TEXT NOT NULL PRIMARY KEY,
    holder     TEXT NOT NULL,
    expires_at REAL NOT NULL,
    since      REAL NOT NULL
) STRICT;

-- The last tick of each periodic job that was enqueued.
CREATE TABLE async_jobs_periodic (
    name       TEXT NOT NULL PRIMARY KEY,
    last_tick  REAL NOT NULL,
    updated_at REAL NOT NULL
) STRICT;
