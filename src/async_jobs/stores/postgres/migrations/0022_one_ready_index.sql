-- Four index entries for a new pending job instead of five (issue 21), and every read of
-- the pending rows still one range or one probe per group.
--
-- Before, a new pending job wrote the primary key, async_jobs_tenant_id and three indexes of
-- the pending rows: async_jobs_claimable (use_case, tenant_id, priority, deadline_at, run_at),
-- for the claim's choice and a tenant's counts; async_jobs_pending_due (use_case, run_at,
-- tenant_id), for the due jobs of a use case in run_at order; and, due at once,
-- async_jobs_pending_ready (use_case, tenant_id, run_at) for the drain's walk of tenants, or,
-- marked delayed (0015), async_jobs_delayed (use_case, run_at, tenant_id). Now:
--
-- async_jobs_ready: the unmarked pending rows in the claim's order. The choice reads it as it
-- read claimable (a due row still marked is chosen once a claim has unmarked it, which each
-- claim does first for its use cases); the walk probes it once per tenant, for the tenant's
-- next unmarked row that is due; the backfill of 0015 walks it.
CREATE INDEX IF NOT EXISTS async_jobs_ready
    ON async_jobs (use_case, tenant_id, priority, deadline_at, run_at)
    WHERE status = 'pending' AND NOT delayed;

-- async_jobs_due: every pending row, unmarked then marked, each part in run_at order. The due
-- unmarked rows of a use case are one range, the due marked rows (those to unmark) another;
-- the oldest due job is the first of either; the use cases with pending jobs are its skip
-- scan.
CREATE INDEX IF NOT EXISTS async_jobs_due
    ON async_jobs (use_case, delayed, run_at, tenant_id) WHERE status = 'pending';

-- async_jobs_marked: the marked rows by tenant, so that a tenant's pending jobs in a use case
-- are still counted on two ranges (this one and async_jobs_ready), never among another
-- tenant's. Led by tenant_id, so that no read of a whole use case's marked rows can take it
-- for async_jobs_due: with statistics that expected due rows among them, the claim's first
-- version of this migration walked the 200,000 marked rows of a use case, every claim, on
-- (use_case, tenant_id, run_at) (docs/scale.md, 0022).
CREATE INDEX IF NOT EXISTS async_jobs_marked
    ON async_jobs (tenant_id, use_case, run_at) WHERE status = 'pending' AND delayed;

DROP INDEX IF EXISTS async_jobs_claimable;
DROP INDEX IF EXISTS async_jobs_pending_ready;
DROP INDEX IF EXISTS async_jobs_pending_due;
DROP INDEX IF EXISTS async_jobs_delayed;

-- A job due at once writes async_jobs_ready and async_jobs_due, one written for the future
-- async_jobs_due and async_jobs_marked. Measured (README "Speed"): the WAL of a batch of
-- 1,000 like jobs fell from 599 to 523 bytes a job, and batches ran at 1.19-1.21x PgQueuer
-- on a machine where they ran at 1.13x before.
--
-- On a table that already holds millions of pending rows, build the three new indexes first
-- without blocking writes (CREATE INDEX CONCURRENTLY with these names and definitions;
-- docs/scale.md): the migration then finds them and only drops the four old ones (each drop
-- takes the table's lock for an instant).

-- The tenants that have a due pending job in a use case that the claim can choose: since the
-- choice reads async_jobs_ready, the unmarked ones (the claim has just unmarked the due
-- marked rows it could; those left marked, held by another claim or past its 1,000, are
-- chosen by a later claim). The tenants of the due unmarked jobs if there are at most p_few
-- of them (a range of async_jobs_due, in run_at order), else a walk of async_jobs_ready, one
-- probe per tenant with unmarked pending jobs, for its first due one. 0015's tenants of the
-- due marked rows are gone with the marked rows' place in the choice.
CREATE OR REPLACE FUNCTION async_jobs_due_tenants(p_use_case text, p_few integer)
RETURNS SETOF text
LANGUAGE sql STABLE AS $$
    WITH RECURSIVE due AS MATERIALIZED (
        SELECT tenant_id FROM async_jobs
        WHERE status = 'pending' AND use_case = p_use_case AND NOT delayed
          AND run_at <= now()
        ORDER BY run_at  -- async_jobs_due's order: no other index can give it
        LIMIT p_few + 1
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
    )
    SELECT DISTINCT tenant_id FROM due WHERE (SELECT count(*) FROM due) <= p_few
    UNION ALL
    SELECT tenant_id FROM walk WHERE (SELECT count(*) FROM due) > p_few;
$$;

-- include: claim.sql
