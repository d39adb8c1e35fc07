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

-- The claim, with every limit. Claimers of one use case take turns (a transaction-scoped
-- advisory lock per use case, taken in name order so that claimers never deadlock): each
-- counts the slots the others have filled, and the count and the claim are one transaction.
-- Within a use case, each tenant offers its first jobs in its own order (priority, deadline,
-- run_at), as many as its slots, max_running and rate bucket allow; the offers are taken in
-- priority, then turn (a tenant's first job, then every tenant's second...) order, so a
-- tenant with a long backlog does not starve one with a single job. The choice is the same
-- as domain.scheduling.plan_claim's, which the other stores use. The SET clause keeps the
-- planner on the index walks even when the table's statistics are stale (see 0001): the
-- sorts that remain are of the few candidates only. They still carry the planner's penalty
-- for a disabled node, and an estimate that large would have the statement JIT-compiled
-- (two seconds per claim): hence jit = off. Its statements are planned once per session
-- (force_generic_plan): planning this statement afresh for every call cost more than
-- running it.
CREATE FUNCTION async_jobs_claim(
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
    p_quota_rates double precision[]
) RETURNS SETOF async_jobs
LANGUAGE plpgsql
SET enable_sort = off
SET enable_bitmapscan = off
SET jit = off
SET plan_cache_mode = force_generic_plan
AS $$
DECLARE
    v_use_cases text[];
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
    FOREACH v_use_case IN ARRAY v_use_cases LOOP  -- sorted: array_agg(DISTINCT) sorts too
        PERFORM pg_advisory_xact_lock(hashtextextended('async_jobs.use_case:' || v_use_case, 0));
    END LOOP;

    RETURN QUERY
    WITH active AS (
        SELECT a.use_case, a.tenant_id, count(*)::integer AS n
        FROM async_jobs a
        WHERE a.status IN ('queued', 'running') AND a.use_case = ANY(v_use_cases)
        GROUP BY a.use_case, a.tenant_id
    ),
    slots AS (
        SELECT u.name AS use_case,
               coalesce((SELECT m.value FROM unnest(p_max_use_cases, p_max_values) AS m(name, value)
                         WHERE m.name = u.name LIMIT 1), p_default_max)
               - coalesce((SELECT sum(a.n) FROM active a WHERE a.use_case = u.name), 0)::integer
                 AS free
        FROM unnest(v_use_cases) AS u(name)
    ),
    groups AS (
        SELECT s.use_case, t.tenant_id, s.free, q.rate, tok.tokens,
               least(s.free, p_limit, q.max_running - coalesce(a.n, 0),
                     floor(tok.tokens)::integer) AS take
        FROM slots s
        CROSS JOIN LATERAL async_jobs_pending_tenants(s.use_case) AS t(tenant_id)
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
            WHERE j.status = 'pending'
              AND j.use_case = g.use_case
              AND j.tenant_id = g.tenant_id
              AND j.run_at <= now()
              AND (j.expires_at IS NULL OR j.expires_at > now())
              AND (cardinality(p_types) = 0 OR j.type = ANY(p_types))
            ORDER BY j.priority, j.deadline_at, j.run_at
            LIMIT g.take
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
        SET status = 'running',
            attempts = j.attempts + 1,
            lease_token = gen_random_uuid(),
            lease_expires_at = now() + make_interval(secs => p_lease_seconds),
            worker_id = p_worker_id,
            started_at = now(),
            finished_at = NULL,
            progress_percent = NULL,
            progress_message = NULL,
            updated_at = now()
        WHERE j.id = ANY(ARRAY(SELECT id FROM chosen))
          AND j.status = 'pending'
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
