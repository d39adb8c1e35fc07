-- The claim's cost no longer grows with the pending jobs that are not due yet (docs/scale.md).
-- It walked every (use case, tenant) group with a pending row and, in each, read every
-- not-due row ahead of the due ones: async_jobs_claimable is in claim order, where
-- run_at <= now() is a filter, not a bound. A group now costs one probe of this index, whose
-- first entry in a group is the group's earliest run_at: a group whose earliest job is in
-- the future has nothing due and is never read.
--
-- On a table that already holds millions of pending rows, build the index first without
-- blocking writes (CREATE INDEX CONCURRENTLY with this name and definition): the migration
-- then finds it and does nothing.
CREATE INDEX IF NOT EXISTS async_jobs_pending_run_at
    ON async_jobs (use_case, tenant_id, run_at) WHERE status = 'pending';

-- The tenants that have a due pending job in a use case: a skip scan of
-- async_jobs_pending_run_at, one probe per tenant with pending jobs, which yields the tenant
-- and its earliest run_at at once.
CREATE FUNCTION async_jobs_due_tenants(p_use_case text) RETURNS SETOF text
LANGUAGE sql STABLE AS $$
    WITH RECURSIVE walk(tenant_id, run_at) AS (
        (SELECT tenant_id, run_at FROM async_jobs
         WHERE status = 'pending' AND use_case = p_use_case
         ORDER BY tenant_id, run_at LIMIT 1)
        UNION ALL
        SELECT n.tenant_id, n.run_at
        FROM walk w
        CROSS JOIN LATERAL (
            SELECT a.tenant_id, a.run_at FROM async_jobs a
            WHERE a.status = 'pending' AND a.use_case = p_use_case
              AND a.tenant_id > w.tenant_id
            ORDER BY a.tenant_id, a.run_at LIMIT 1
        ) AS n
    )
    SELECT tenant_id FROM walk WHERE run_at <= now();
$$;

-- include: claim.sql
