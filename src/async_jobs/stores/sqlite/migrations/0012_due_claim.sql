-- The claim skips a (use case, tenant) pair whose pending jobs are all in the future with one
-- probe of this index (its earliest run_at), instead of walking its not-due jobs (as on
-- PostgreSQL, 0012 there; docs/scale.md).
CREATE INDEX IF NOT EXISTS async_jobs_pending_run_at
    ON async_jobs (use_case, tenant_id, run_at) WHERE status = 'pending';
