-- The updates that follow a locking SELECT name their rows by id alone (issue 21).
--
-- The claim's unmarking of due delayed rows, the claim's own update and the backfill of 0015
-- each lock their rows with SELECT ... FOR UPDATE SKIP LOCKED, whose guard PostgreSQL checks
-- again on the row it locks, then updated them "WHERE id = ANY(...) AND <the guard>". That
-- guard is the predicate of a partial index (async_jobs_delayed, async_jobs_claimable,
-- async_jobs_pending_ready), and with statistics taken while that index was empty the
-- planner preferred a walk of the whole index, filtering by id, to the primary key. It was
-- measured during the backfill of 1,000,000 rows: each claim took 100-200 ms, all of it in
-- that walk, and the loop of enqueues and claims beside it waited up to 4.3 s
-- (bench/backfill.py, docs/scale.md). tests/integration/test_postgres_plans.py checks the
-- plans on such statistics.
--
-- The backfill also read its next batch with whatever plan the statistics gave: on a table
-- analysed before the marking, a sequential scan from the start of the table, past every
-- row marked by the batches before (and every finished job). It now walks
-- async_jobs_pending_ready in that index's order, which a marked row leaves, so each batch
-- starts at the first unmarked row. A procedure that commits cannot carry a SET clause, so
-- the settings are made for each batch's transaction.
CREATE OR REPLACE PROCEDURE async_jobs_mark_delayed(p_batch integer DEFAULT 10000)
LANGUAGE plpgsql AS $$
DECLARE
    v_ids uuid[];
BEGIN
    LOOP
        PERFORM set_config('enable_seqscan', 'off', true);
        PERFORM set_config('enable_bitmapscan', 'off', true);
        v_ids := ARRAY(
            SELECT id FROM async_jobs
            WHERE status = 'pending' AND NOT delayed AND run_at > now()
            ORDER BY use_case, tenant_id, run_at
            LIMIT p_batch
            FOR UPDATE SKIP LOCKED);
        EXIT WHEN cardinality(v_ids) = 0;
        UPDATE async_jobs SET delayed = true WHERE id = ANY(v_ids);
        COMMIT;
    END LOOP;
END;
$$;

-- include: claim.sql
