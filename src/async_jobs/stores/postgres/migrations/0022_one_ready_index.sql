-- One index for the claim's choice and the drain's walk of tenants (issue 21): every new job
-- writes one index entry fewer.
--
-- The claim read two indexes of the pending rows led by (use_case, tenant_id):
-- async_jobs_claimable, in the claim's order (priority, deadline_at, run_at), which held the
-- marked rows too (0015), and async_jobs_pending_ready, by run_at, which did not and gave the
-- walk its tenants. A new job wrote an entry in both (a delayed one in claimable and
-- async_jobs_delayed). They become one, async_jobs_ready: the claim's order, unmarked rows
-- only.
-- - The claim's choice reads it as it read claimable. A marked row that is due is chosen
--   once it is unmarked, which each claim does first for its use cases (up to 1,000 rows per
--   use case and claim); the walk sees the due marked rows meanwhile (woken, below).
-- - The walk probes it once per tenant, for the tenant's next unmarked row that is due. An
--   unmarked row is due unless it was written before 0015 and the backfill has not marked it
--   yet: a tenant whose unmarked rows are all in the future costs the walk those rows, as it
--   cost the choice before.
-- - The backfill (async_jobs_mark_delayed) walks it instead of pending_ready.
-- Measured (README "Speed", index costs): a COPY of new jobs into the table without
-- pending_ready ran 1.15x as fast; the claim's reads are the same number of probes.
--
-- On a table that already holds millions of pending rows, build the new index first without
-- blocking writes (CREATE INDEX CONCURRENTLY with this name and definition; docs/scale.md):
-- the migration then finds it and only drops the two old ones (each drop takes the table's
-- lock for an instant).
CREATE INDEX IF NOT EXISTS async_jobs_ready
    ON async_jobs (use_case, tenant_id, priority, deadline_at, run_at)
    WHERE status = 'pending' AND NOT delayed;
DROP INDEX IF EXISTS async_jobs_claimable;
DROP INDEX IF EXISTS async_jobs_pending_ready;

-- The tenants that have a due pending job in a use case, as in 0015: the tenants of the due
-- jobs if there are at most p_few of them, else a walk of async_jobs_ready (one probe per
-- tenant with unmarked pending jobs, for its first due one) and the tenants of the due marked
-- rows (those a claim has not unmarked yet: few).
CREATE OR REPLACE FUNCTION async_jobs_due_tenants(p_use_case text, p_few integer)
RETURNS SETOF text
LANGUAGE sql STABLE AS $$
    WITH RECURSIVE due AS MATERIALIZED (
        SELECT tenant_id FROM async_jobs
        WHERE status = 'pending' AND use_case = p_use_case AND run_at <= now()
        ORDER BY run_at LIMIT p_few + 1
    ),
    walk(tenant_id) AS (
        (SELECT tenant_id FROM async_jobs
         WHERE status = 'pending' AND NOT delayed AND use_case = p_use_case
           AND run_at <= now()
         ORDER BY tenant_id LIMIT 1)
        UNION ALL
        SELECT n.tenant_id
        FROM walk w
        CROSS JOIN LATERAL (
            SELECT a.tenant_id FROM async_jobs a
            WHERE a.status = 'pending' AND NOT a.delayed AND a.use_case = p_use_case
              AND a.tenant_id > w.tenant_id AND a.run_at <= now()
            ORDER BY a.tenant_id LIMIT 1
        ) AS n
    ),
    woken AS (
        SELECT tenant_id FROM async_jobs
        WHERE status = 'pending' AND delayed AND use_case = p_use_case AND run_at <= now()
    )
    SELECT DISTINCT tenant_id FROM due WHERE (SELECT count(*) FROM due) <= p_few
    UNION ALL
    SELECT tenant_id FROM (
        SELECT tenant_id FROM walk
        UNION
        SELECT tenant_id FROM woken
    ) AS many
    WHERE (SELECT count(*) FROM due) > p_few;
$$;

-- include: claim.sql
