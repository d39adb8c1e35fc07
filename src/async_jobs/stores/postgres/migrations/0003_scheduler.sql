-- The scheduler: per-use-case concurrency and pausing, tenant quotas and rate buckets,
-- fair turns between tenants, job expiry, leadership, periodic jobs.

ALTER TABLE async_jobs ADD COLUMN expires_at timestamptz;

-- The claim walks pending jobs per use case and tenant, each group in its own order; the
-- leading (use_case, tenant_id) also lets it list both by skip scans.
DROP INDEX async_jobs_claimable;
CREATE INDEX async_jobs_claimable
    ON async_jobs (use_case, tenant_id, priority, deadline_at, run_at) WHERE status = 'pending';

-- Jobs holding a slot, counted per use case and tenant by every claim (and scanned by the
-- reaper). lease_expires_at is in no index any more, so a lease renewal can be a HOT update.
DROP INDEX async_jobs_running_lease;
CREATE INDEX async_jobs_active
    ON async_jobs (use_case, tenant_id) WHERE status IN ('queued', 'running');

CREATE INDEX async_jobs_expiring
    ON async_jobs (expires_at) WHERE expires_at IS NOT NULL AND status IN ('pending', 'queued');

-- A paused use case is not dispatched; the row outlives restarts.
CREATE TABLE async_jobs_use_cases (
    name       text PRIMARY KEY,
    paused     boolean NOT NULL DEFAULT false,
    updated_at timestamptz NOT NULL DEFAULT now()
);

-- One token bucket per tenant and use case with a max_per_second quota. It is refilled
-- lazily: the tokens now are the stored ones plus the rate times the time since refilled_at.
CREATE TABLE async_jobs_rate_buckets (
    tenant_id   text NOT NULL,
    use_case    text NOT NULL,
    tokens      double precision NOT NULL,
    refilled_at timestamptz NOT NULL,
    PRIMARY KEY (tenant_id, use_case)
);

-- Who leads a role (the scheduler) until when.
CREATE TABLE async_jobs_leaders (
    role       text PRIMARY KEY,
    holder     text NOT NULL,
    expires_at timestamptz NOT NULL,
    since      timestamptz NOT NULL DEFAULT now()
);

-- The last tick of each periodic job that was enqueued.
CREATE TABLE async_jobs_periodic (
    name       text PRIMARY KEY,
    last_tick  timestamptz NOT NULL,
    updated_at timestamptz NOT NULL DEFAULT now()
);

-- The use cases that have pending jobs, by a skip scan of async_jobs_claimable: one index
-- probe per use case instead of a walk of every pending row.
CREATE FUNCTION async_jobs_pending_use_cases() RETURNS SETOF text
LANGUAGE sql STABLE AS $$
    WITH RECURSIVE walk(use_case) AS (
        (SELECT use_case FROM async_jobs WHERE status = 'pending' ORDER BY use_case LIMIT 1)
        UNION ALL
        SELECT (SELECT a.use_case FROM async_jobs a
                WHERE a.status = 'pending' AND a.use_case > w.use_case
                ORDER BY a.use_case LIMIT 1)
        FROM walk w WHERE w.use_case IS NOT NULL
    )
    SELECT use_case FROM walk WHERE use_case IS NOT NULL;
$$;

-- The tenants that have pending jobs in a use case, by the same kind of skip scan.
CREATE FUNCTION async_jobs_pending_tenants(p_use_case text) RETURNS SETOF text
LANGUAGE sql STABLE AS $$
    WITH RECURSIVE walk(tenant_id) AS (
        (SELECT tenant_id FROM async_jobs
         WHERE status = 'pending' AND use_case = p_use_case ORDER BY tenant_id LIMIT 1)
        UNION ALL
        SELECT (SELECT a.tenant_id FROM async_jobs a
                WHERE a.status = 'pending' AND a.use_case = p_use_case
                  AND a.tenant_id > w.tenant_id
                ORDER BY a.tenant_id LIMIT 1)
        FROM walk w WHERE w.tenant_id IS NOT NULL
    )
    SELECT tenant_id FROM walk WHERE tenant_id IS NOT NULL;
$$;

DROP FUNCTION async_jobs_claim(integer, text[], text[], text, double precision);

-- The claim with every limit, async_jobs_claim, was created here; its one definition is now
-- stores/postgres/claim.sql, which 0005 and the later migrations that change it load.
