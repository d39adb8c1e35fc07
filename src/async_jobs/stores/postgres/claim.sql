-- async_jobs_claim: the claim with every limit, its one definition. The migrations that
-- create or change it load this file (a line "-- include: claim.sql"), so a database gets
-- the definition current when its last such migration ran; a change here needs a new
-- migration that includes it again.
--
-- Which use cases: those asked for (p_use_cases; empty: every use case with pending jobs,
-- found by a skip scan), less the paused ones.
--
-- Guarded and free use cases. A use case is guarded when it has a cap (its own entry in
-- p_max_use_cases / p_max_values, else p_default_max; both absent: no cap) or some tenant
-- has a quota in it (an entry for it or for '*'). Claimers of a guarded use case take
-- turns (a transaction-scoped advisory lock per use case, taken in name order so that
-- claimers never deadlock): each counts the slots the others have filled, and the count
-- and the claim are one transaction. A free use case costs neither the lock nor the count:
-- its claimers run side by side, each skipping the rows another has locked (FOR UPDATE
-- SKIP LOCKED, which every use case's candidates take, harmless under the lock).
--
-- Which tenants: those with a due job (async_jobs_due_tenants, 0012, 0022): the tenants of
-- the due jobs when there are at most p_limit of them (one claim could take them all), else
-- one index probe per tenant with unmarked pending jobs. A tenant whose jobs are all in the
-- future is never read. Before it chooses, the claim unmarks the due rows of its use cases
-- that were written for the future (delayed, 0015): the walk and the choice read the
-- unmarked rows only (one index, async_jobs_ready, 0022), so a tenant whose jobs are all in
-- the future costs them nothing, even in a drain. A due row still marked (held by another
-- claim that is unmarking it, or past this claim's 1,000) is chosen once it is unmarked.
--
-- The choice: within a use case, each tenant offers its first jobs in its own order
-- (priority, deadline, run_at), as many as its slots, max_running and rate bucket allow;
-- the offers are taken in priority, then turn (a tenant's first job, then every tenant's
-- second...) order, so a tenant with a long backlog does not starve one with a single job.
-- The choice is the same as domain.scheduling.plan_claim's, which the other stores use.
--
-- p_dispatch: the chosen jobs become queued (attempts unchanged, no lease: a dispatch id
-- and its deadline instead) under exactly the same limits, since queued jobs hold their
-- slots like running ones.
--
-- The SET clause keeps the planner on the index walks even when the table's statistics are
-- stale (see 0001): the sorts that remain are of the few candidates only. enable_seqscan
-- (0019): a session plans these statements once; a worker that started on an empty table had
-- them read the whole table (its two updates by id), every claim, until an ANALYZE made the
-- session plan again: 17x slower drains 300,000 rows later. They still carry
-- the planner's penalty for a disabled node, and an estimate that large would have the
-- statement JIT-compiled (two seconds per claim): hence jit = off. Its statements are
-- planned once per session (force_generic_plan): planning this statement afresh for every
-- call cost more than running it.
CREATE OR REPLACE FUNCTION async_jobs_claim(
    p_limit integer,
    p_use_cases text[],
    p_types text[],
    p_worker_id text,
    p_lease_seconds double precision,
    p_default_max integer,
    p_max_use_cases text[],
    p_max_values integer[],
    p_quota_tenants text[],
    p_quota_use_cases text[],
    p_quota_running integer[],
    p_quota_rates double precision[],
    p_dispatch boolean
) RETURNS SETOF async_jobs
LANGUAGE plpgsql
SET enable_sort = off
SET enable_bitmapscan = off
SET enable_seqscan = off
SET jit = off
SET plan_cache_mode = force_generic_plan
AS $$
DECLARE
    v_use_cases text[];
    v_guarded text[];
    v_use_case text;
BEGIN
    IF cardinality(p_use_cases) > 0 THEN
        SELECT array_agg(DISTINCT u) INTO v_use_cases FROM unnest(p_use_cases) AS u
        WHERE NOT EXISTS (SELECT 1 FROM async_jobs_use_cases p WHERE p.name = u AND p.paused);
    ELSE
        SELECT array_agg(u ORDER BY u) INTO v_use_cases FROM async_jobs_pending_use_cases() AS u
        WHERE NOT EXISTS (SELECT 1 FROM async_jobs_use_cases p WHERE p.name = u AND p.paused);
    END IF;
    IF v_use_cases IS NULL THEN
        RETURN;
    END IF;
    SELECT array_agg(u ORDER BY u) INTO v_guarded FROM unnest(v_use_cases) AS u
    WHERE p_default_max IS NOT NULL
       OR u = ANY(p_max_use_cases)
       OR u = ANY(p_quota_use_cases)
       OR '*' = ANY(p_quota_use_cases);
    IF v_guarded IS NOT NULL THEN
        FOREACH v_use_case IN ARRAY v_guarded LOOP  -- sorted
            PERFORM pg_advisory_xact_lock(
                hashtextextended('async_jobs.use_case:' || v_use_case, 0));
        END LOOP;
    END IF;

    -- Due marked rows become unmarked, at most 1,000 per use case and claim (a range of
    -- async_jobs_due, usually empty; the LIMIT keeps a generic plan on that index). Rows
    -- left marked, or held by another claim, are chosen by a later claim, once unmarked.
    -- The rows are locked by the inner SELECT, which checks its guard again on the row it
    -- locks, so the update names them by id alone (0016): a guard here matched the partial
    -- index's predicate, and with statistics taken while the index was empty the planner
    -- walked all of it, filtering by id.
    UPDATE async_jobs SET delayed = false
    WHERE id = ANY(ARRAY(
            SELECT d.id FROM unnest(v_use_cases) AS u(name)
            CROSS JOIN LATERAL (
                SELECT w.id FROM async_jobs w
                WHERE w.status = 'pending' AND w.delayed AND w.use_case = u.name
                  AND w.run_at <= now()
                ORDER BY w.run_at
                LIMIT 1000
                FOR UPDATE SKIP LOCKED
            ) AS d));

    RETURN QUERY
    WITH active AS (  -- guarded use cases only; none: never scanned
        SELECT a.use_case, a.tenant_id, count(*)::integer AS n
        FROM async_jobs a
        WHERE v_guarded IS NOT NULL
          AND a.status IN ('queued', 'running') AND a.use_case = ANY(v_guarded)
        GROUP BY a.use_case, a.tenant_id
    ),
    caps AS (
        SELECT u.name AS use_case,
               coalesce((SELECT m.value FROM unnest(p_max_use_cases, p_max_values) AS m(name, value)
                         WHERE m.name = u.name LIMIT 1), p_default_max) AS cap
        FROM unnest(v_use_cases) AS u(name)
    ),
    slots AS (
        SELECT c.use_case,
               CASE WHEN c.cap IS NULL THEN p_limit
                    ELSE c.cap - coalesce((SELECT sum(a.n) FROM active a
                                           WHERE a.use_case = c.use_case), 0)::integer
               END AS free
        FROM caps c
    ),
    groups AS (
        SELECT s.use_case, t.tenant_id, s.free, q.rate, tok.tokens,
               least(s.free, p_limit, q.max_running - coalesce(a.n, 0),
                     floor(tok.tokens)::integer) AS take
        FROM slots s
        CROSS JOIN LATERAL async_jobs_due_tenants(s.use_case, p_limit) AS t(tenant_id)
        LEFT JOIN active a ON a.use_case = s.use_case AND a.tenant_id = t.tenant_id
        LEFT JOIN LATERAL (
            SELECT q.max_running, q.rate
            FROM unnest(p_quota_tenants, p_quota_use_cases, p_quota_running, p_quota_rates)
                AS q(tenant_id, use_case, max_running, rate)
            WHERE q.tenant_id = t.tenant_id AND q.use_case IN (s.use_case, '*')
            ORDER BY q.use_case = '*'  -- the use case's own entry first
            LIMIT 1
        ) AS q ON true
        LEFT JOIN async_jobs_rate_buckets b
            ON b.tenant_id = t.tenant_id AND b.use_case = s.use_case
        CROSS JOIN LATERAL (
            SELECT CASE
                WHEN q.rate IS NULL THEN NULL
                WHEN b.tokens IS NULL THEN greatest(1.0, q.rate)
                ELSE least(greatest(1.0, q.rate),
                           b.tokens + q.rate * extract(epoch FROM now() - b.refilled_at))
            END AS tokens
        ) AS tok
        WHERE s.free > 0
    ),
    candidates AS (
        SELECT c.id, c.priority, c.deadline_at, c.run_at, g.use_case, g.free,
               row_number() OVER (PARTITION BY g.use_case, g.tenant_id
                                  ORDER BY c.priority, c.deadline_at, c.run_at) AS turn
        FROM groups g
        CROSS JOIN LATERAL (
            SELECT j.id, j.priority, j.deadline_at, j.run_at
            FROM async_jobs j
            WHERE j.status = 'pending' AND NOT j.delayed  -- async_jobs_ready (0022)
              AND j.use_case = g.use_case
              AND j.tenant_id = g.tenant_id
              AND j.run_at <= now()
              AND (j.expires_at IS NULL OR j.expires_at > now())
              AND (cardinality(p_types) = 0 OR j.type = ANY(p_types))
            ORDER BY j.priority, j.deadline_at, j.run_at
            LIMIT g.take
            FOR UPDATE SKIP LOCKED
        ) AS c
        WHERE g.take > 0
    ),
    ranked AS (
        SELECT c.*, row_number() OVER (PARTITION BY c.use_case
                                       ORDER BY c.priority, c.turn, c.deadline_at, c.run_at)
                    AS slot
        FROM candidates c
    ),
    chosen AS (
        SELECT r.id FROM ranked r
        WHERE r.slot <= r.free
        ORDER BY r.priority, r.turn, r.deadline_at, r.run_at
        LIMIT p_limit
    ),
    claimed AS (
        UPDATE async_jobs AS j
        SET status = CASE WHEN p_dispatch THEN 'queued' ELSE 'running' END::async_jobs_state,
            attempts = j.attempts + CASE WHEN p_dispatch THEN 0 ELSE 1 END,
            lease_token = CASE WHEN p_dispatch THEN NULL ELSE gen_random_uuid() END,
            lease_expires_at = CASE WHEN p_dispatch THEN NULL
                                    ELSE now() + make_interval(secs => p_lease_seconds) END,
            worker_id = CASE WHEN p_dispatch THEN NULL ELSE p_worker_id END,
            started_at = CASE WHEN p_dispatch THEN j.started_at ELSE now() END,
            finished_at = CASE WHEN p_dispatch THEN j.finished_at END,
            progress_percent = NULL,
            progress_message = NULL,
            delayed = false,
            dispatch_id = CASE WHEN p_dispatch THEN gen_random_uuid() END,
            dispatch_expires_at = CASE WHEN p_dispatch
                                       THEN now() + make_interval(secs => p_lease_seconds) END,
            updated_at = now()
        -- Locked by the candidates' FOR UPDATE, their guard checked on the row locked: by
        -- id alone, for the reason of the unmarking above (0016).
        WHERE j.id = ANY(ARRAY(SELECT id FROM chosen))
        RETURNING j.*
    ),
    spent AS (
        INSERT INTO async_jobs_rate_buckets AS b (tenant_id, use_case, tokens, refilled_at)
        SELECT g.tenant_id, g.use_case, g.tokens - n.taken, now()
        FROM (SELECT c.use_case, c.tenant_id, count(*) AS taken
              FROM claimed c GROUP BY c.use_case, c.tenant_id) AS n
        JOIN groups g ON g.use_case = n.use_case AND g.tenant_id = n.tenant_id
        WHERE g.rate IS NOT NULL
        ON CONFLICT (tenant_id, use_case)
        DO UPDATE SET tokens = EXCLUDED.tokens, refilled_at = EXCLUDED.refilled_at
    )
    SELECT * FROM claimed;
END;
$$;
