-- async_jobs_record_outcomes and async_jobs_extend_leases: a worker's writes to the jobs it
-- holds, each one statement, defined here once. The migrations that create or change them
-- load this file (a line "-- include: outcomes.sql"), with the parts of queries.sql they use
-- (lease_fence, attempt_entry) written in as they are when the migration runs: a change to
-- this file or to those parts needs a new migration that includes it again.
--
-- They are functions, like the claim, for their SET clause (0020). A session plans a
-- prepared statement's generic plan once, and made on a small table the plan of these
-- by-id updates was a sequential scan, kept until the next ANALYZE of the table: an outcome
-- write went from 0.9 ms to 49 ms beside 220,000 more rows (docs/scale.md). With
-- enable_seqscan off they always find their rows through the primary key; their one plan
-- per session is generic (force_generic_plan), as planning them afresh each time costs more
-- than running them.

-- Fenced (lease_fence): a row changes only while it is running under the attempt and lease
-- token of the outcome.
-- A released attempt is handed back without counting. A job whose cancellation was asked
-- (j.cancel_requested) ends cancelled instead of being retried or handed back.
-- Every counted attempt that did not succeed joins the history (the latest $8 are kept, its
-- error message cut to $9 characters; a success is the row itself, and skipping it keeps the
-- hot path light). The rules are domain/transitions.py's, checked against it by
-- tests/integration/test_transitions.py.
-- The jobs that ended are announced on async_jobs_finished (ids, comma-separated, at most
-- 200 per notification), delivered at commit, for callers waiting for an outcome.
CREATE OR REPLACE FUNCTION async_jobs_record_outcomes(
    uuid[], integer[], uuid[], text[], text[], text[], double precision[], integer, integer
) RETURNS SETOF uuid
LANGUAGE plpgsql
SET enable_seqscan = off
SET enable_bitmapscan = off
SET jit = off
SET plan_cache_mode = force_generic_plan
AS $$
BEGIN
    RETURN QUERY
    WITH written AS (
    UPDATE async_jobs AS j
    SET status = (CASE
            WHEN u.kind IN ('retry', 'released') AND j.cancel_requested THEN 'cancelled'
            WHEN u.kind = 'retry' OR u.kind = 'released' THEN 'pending'
            ELSE u.kind END)::async_jobs_state,
        attempts = j.attempts - (u.kind = 'released' AND NOT j.cancel_requested)::int,
        result = u.result::jsonb,
        error = COALESCE(u.error::jsonb, j.error),
        reason = CASE
            WHEN u.kind = 'cancelled' OR (u.kind IN ('retry', 'released') AND j.cancel_requested)
                THEN 'cancelled'
            WHEN u.kind = 'released' THEN j.reason END,
        history = CASE
            WHEN u.kind = 'succeeded' OR (u.kind = 'released' AND NOT j.cancel_requested)
                THEN j.history
            ELSE (CASE WHEN jsonb_array_length(j.history) >= $8::int THEN j.history - 0
                       ELSE j.history END)
                 || jsonb_build_array(jsonb_build_object(
                        -- use: attempt_entry
                        'outcome', CASE WHEN u.kind IN ('retry', 'released') AND j.cancel_requested
                                        THEN 'cancelled' ELSE u.kind END,
                        'error_type', u.error::jsonb ->> 'type',
                        'error_message', left(u.error::jsonb ->> 'message', $9::int)))
            END,
        run_at = CASE WHEN u.kind = 'retry' AND NOT j.cancel_requested
                      THEN now() + make_interval(secs => u.delay) ELSE j.run_at END,
        delayed = u.kind = 'retry' AND NOT j.cancel_requested AND coalesce(u.delay, 0) > 0,
        deadline_at = CASE WHEN u.kind = 'retry' AND NOT j.cancel_requested
                           THEN now() + make_interval(secs => u.delay + j.delay_tolerance_seconds)
                           ELSE j.deadline_at END,
        started_at = CASE WHEN u.kind = 'released' AND NOT j.cancel_requested THEN NULL
                          ELSE j.started_at END,
        finished_at = CASE WHEN u.kind IN ('succeeded', 'failed', 'cancelled') OR j.cancel_requested
                           THEN now() END,
        lease_token = NULL,
        lease_expires_at = NULL,
        updated_at = now()
    FROM unnest($1::uuid[], $2::int[], $3::uuid[], $4::text[], $5::text[], $6::text[],
                $7::float8[]) AS u(id, attempt, token, kind, result, error, delay)
    -- use: lease_fence
    RETURNING j.id, j.status
    ), announced AS (
        SELECT pg_notify('async_jobs_finished', string_agg(f.id::text, ','))
        FROM (SELECT w.id, (row_number() OVER ()) / 200 AS chunk
              FROM written w WHERE w.status IN ('succeeded', 'failed', 'cancelled')) AS f
        GROUP BY f.chunk
    )
    SELECT w.id FROM written w, (SELECT count(*) FROM announced) AS a;
END;
$$;

-- One statement renews every lease a worker holds; it also tells the worker which of its
-- jobs are to be cancelled.
CREATE OR REPLACE FUNCTION async_jobs_extend_leases(uuid[], integer[], uuid[], double precision)
RETURNS TABLE (id uuid, cancel_requested boolean)
LANGUAGE plpgsql
SET enable_seqscan = off
SET enable_bitmapscan = off
SET jit = off
SET plan_cache_mode = force_generic_plan
AS $$
#variable_conflict use_column
BEGIN
    RETURN QUERY
    UPDATE async_jobs AS j
    SET lease_expires_at = now() + make_interval(secs => $4),
        updated_at = now()
    FROM unnest($1::uuid[], $2::int[], $3::uuid[]) AS u(id, attempt, token)
    -- use: lease_fence
    RETURNING j.id, j.cancel_requested;
END;
$$;
