-- The claim no longer visits the tenants whose pending jobs are all in the future, even in a
-- drain (docs/scale.md, "0015"). Since 0012, while more jobs are due than one claim takes, the
-- claim walked every (use case, tenant) with a pending row, one index probe each: a backlog
-- of delayed jobs over many tenants cost every claim of a drain one probe per tenant.
--
-- delayed: an internal mark, not a state (the job is pending, as DESIGN.md says). A row is
-- marked when it is written pending with a run_at in the future (an enqueue with a delay or a
-- run_at, a retry with backoff); the claim unmarks the due marked rows of its use cases before
-- it chooses (one range of async_jobs_delayed: run_at <= now() is a bound there). The mark
-- only says where the claim looks for a row, never whether it takes it: a due row is found
-- whether it is marked or not (async_jobs_due_tenants reads the due marked rows too), so a
-- row marked or unmarked wrongly costs time, never a job.
--
-- ADD COLUMN with a constant default rewrites nothing (PostgreSQL 11+); it takes the table's
-- exclusive lock for an instant. Existing rows stay unmarked (as before 0015: correct, and as
-- costly as before) until CALL async_jobs_mark_delayed() marks the future ones in batches.
ALTER TABLE async_jobs ADD COLUMN IF NOT EXISTS delayed boolean NOT NULL DEFAULT false;

-- The walk of a drain: the pending rows that are not marked, by group and run_at (0012's
-- async_jobs_pending_run_at less the marked rows, which it replaces).
CREATE INDEX IF NOT EXISTS async_jobs_pending_ready
    ON async_jobs (use_case, tenant_id, run_at) WHERE status = 'pending' AND NOT delayed;

-- The marked rows by run_at: the due ones of a use case are one range.
CREATE INDEX IF NOT EXISTS async_jobs_delayed
    ON async_jobs (use_case, run_at, tenant_id) WHERE status = 'pending' AND delayed;

DROP INDEX IF EXISTS async_jobs_pending_run_at;

-- On a table that already holds millions of pending rows, build both first without blocking
-- writes (CREATE INDEX CONCURRENTLY with these names and definitions; docs/scale.md).

-- The tenants that have a due pending job in a use case, as in 0012: the tenants of the due
-- jobs if there are at most p_few of them, else a walk of async_jobs_pending_ready (one probe
-- per tenant with unmarked pending jobs) and the tenants of the due marked rows (those a
-- concurrent claim is unmarking: few).
CREATE OR REPLACE FUNCTION async_jobs_due_tenants(p_use_case text, p_few integer)
RETURNS SETOF text
LANGUAGE sql STABLE AS $$
    WITH RECURSIVE due AS MATERIALIZED (
        SELECT tenant_id FROM async_jobs
        WHERE status = 'pending' AND use_case = p_use_case AND run_at <= now()
        ORDER BY run_at LIMIT p_few + 1
    ),
    walk(tenant_id, run_at) AS (
        (SELECT tenant_id, run_at FROM async_jobs
         WHERE status = 'pending' AND NOT delayed AND use_case = p_use_case
         ORDER BY tenant_id, run_at LIMIT 1)
        UNION ALL
        SELECT n.tenant_id, n.run_at
        FROM walk w
        CROSS JOIN LATERAL (
            SELECT a.tenant_id, a.run_at FROM async_jobs a
            WHERE a.status = 'pending' AND NOT a.delayed AND a.use_case = p_use_case
              AND a.tenant_id > w.tenant_id
            ORDER BY a.tenant_id, a.run_at LIMIT 1
        ) AS n
    ),
    woken AS (
        SELECT tenant_id FROM async_jobs
        WHERE status = 'pending' AND delayed AND use_case = p_use_case AND run_at <= now()
    )
    SELECT DISTINCT tenant_id FROM due WHERE (SELECT count(*) FROM due) <= p_few
    UNION ALL
    SELECT tenant_id FROM (
        SELECT tenant_id FROM walk WHERE run_at <= now()
        UNION
        SELECT tenant_id FROM woken
    ) AS many
    WHERE (SELECT count(*) FROM due) > p_few;
$$;

-- The backfill: marks the pending rows of the future that are not marked yet, p_batch rows
-- per transaction (each batch commits: CALL it outside a transaction block). It reads
-- async_jobs_pending_ready, which a marked row leaves: stopped and called again, it goes on
-- where it stopped. A job claimed or cancelled meanwhile is not touched (the guard is read
-- again under the row lock; SKIP LOCKED passes rows another transaction holds).
CREATE OR REPLACE PROCEDURE async_jobs_mark_delayed(p_batch integer DEFAULT 10000)
LANGUAGE plpgsql AS $$
DECLARE
    v_marked integer;
BEGIN
    LOOP
        UPDATE async_jobs SET delayed = true
        WHERE id = ANY(ARRAY(
                SELECT id FROM async_jobs
                WHERE status = 'pending' AND NOT delayed AND run_at > now()
                LIMIT p_batch
                FOR UPDATE SKIP LOCKED))
          AND status = 'pending' AND NOT delayed AND run_at > now();
        GET DIAGNOSTICS v_marked = ROW_COUNT;
        COMMIT;
        EXIT WHEN v_marked = 0;
    END LOOP;
END;
$$;

-- include: claim.sql
