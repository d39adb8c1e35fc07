-- Newest-first listings filtered by a state other than succeeded, as on PostgreSQL (0009
-- there); async_jobs_finished exists here since 0003.
CREATE INDEX IF NOT EXISTS async_jobs_unsucceeded_created
    ON async_jobs (created_at DESC, id DESC) WHERE status <> 'succeeded';

-- Jobs waiting for a retry, for the last hour of the stats (as on PostgreSQL).
CREATE INDEX IF NOT EXISTS async_jobs_retrying
    ON async_jobs (started_at) WHERE status = 'pending' AND started_at IS NOT NULL;
