-- The claim's cost no longer grows with the pending jobs that are not due yet (docs/scale.md).
-- It walked every (use case, tenant) group with a pending row and, in each, read every
-- not-due row ahead of the due ones: async_jobs_claimable is in claim order, where
-- run_at <= now() is a filter, not a bound. Now it reads only groups that have a due job,
-- found on two indexes of the pending rows by run_at:
--
-- async_jobs_pending_due, in which the due jobs of a use case are one range (run_at <= now()):
-- when they are few, the groups are their tenants, whatever the groups that have none;
CREATE INDEX IF NOT EXISTS async_jobs_pending_due
    ON async_jobs (use_case, run_at, tenant_id) WHERE status = 'pending';

-- async_jobs_pending_run_at, whose first entry in a group is the group's earliest run_at:
-- when the due jobs are many, a skip scan walks the groups, one probe each, and a group
-- whose earliest job is in the future is never read.
CREATE INDEX IF NOT EXISTS async_jobs_pending_run_at
    ON async_jobs (use_case, tenant_id, run_at) WHERE status = 'pending';

-- On a table that already holds millions of pending rows, build both first without blocking
-- writes (CREATE INDEX CONCURRENTLY with these names and definitions): the migration then
-- finds them and does nothing.

-- The tenants that have a due pending job in a use case: the tenants of its due jobs if
-- there are at most p_few of them (a read of at most p_few + 1 index entries), else a skip
-- scan of async_jobs_pending_run_at, one probe per tenant with pending jobs, which yields the
-- tenant and its earliest run_at at once. Either way the same tenants.
CREATE FUNCTION async_jobs_due_tenants(p_use_case text, p_few integer) RETURNS SETOF text
LANGUAGE sql STABLE AS $$
    WITH RECURSIVE due AS MATERIALIZED (
        SELECT tenant_id FROM async_jobs
        WHERE status = 'pending' AND use_case = p_use_case AND run_at <= now()
        ORDER BY run_at LIMIT p_few + 1
    ),
    walk(tenant_id, run_at) AS (
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
    SELECT DISTINCT tenant_id FROM due WHERE (SELECT count(*) FROM due) <= p_few
    UNION ALL
    SELECT tenant_id FROM walk WHERE run_at <= now() AND (SELECT count(*) FROM due) > p_few;
$$;

-- include: claim.sql
