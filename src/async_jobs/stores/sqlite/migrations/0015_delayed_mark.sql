-- Jobs written for the future are marked (delayed = 1) and the claim's walk of the (use case,
-- tenant) pairs reads the unmarked pending rows only, as on PostgreSQL (its 0015;
-- docs/scale.md). The claim first unmarks the due marked rows (claim_undelay): it holds the
-- write lock, so after that every due pending row is unmarked and a pair whose jobs are all
-- in the future is never visited. ADD COLUMN with a constant default rewrites nothing.
-- Rows written before this migration stay unmarked: claimed right, walked as before.
ALTER TABLE async_jobs ADD COLUMN delayed INTEGER NOT NULL DEFAULT 0;

CREATE INDEX IF NOT EXISTS async_jobs_pending_ready
    ON async_jobs (use_case, tenant_id, run_at) WHERE status = 'pending' AND delayed = 0;

-- By run_at alone: the claim unmarks the due marked rows of every use case at once (it holds
-- the one write lock anyway), one range whatever the statistics.
CREATE INDEX IF NOT EXISTS async_jobs_delayed
    ON async_jobs (run_at) WHERE status = 'pending' AND delayed = 1;

DROP INDEX IF EXISTS async_jobs_pending_run_at;
