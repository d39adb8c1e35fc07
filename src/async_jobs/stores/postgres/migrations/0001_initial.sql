-- The jobs table, its state and priority types, and the indexes of the claim path.

CREATE TYPE async_jobs_state AS ENUM (
    'pending', 'queued', 'running', 'succeeded', 'failed', 'cancelled'
);

-- Declaration order is importance: ORDER BY priority runs critical first.
CREATE TYPE async_jobs_priority AS ENUM ('critical', 'high', 'medium', 'low');

CREATE TABLE async_jobs (
    id                      uuid PRIMARY KEY,
    tenant_id               text NOT NULL,
    use_case                text NOT NULL,
    type                    text NOT NULL,
    payload                 jsonb NOT NULL DEFAULT '{}'::jsonb,
    priority                async_jobs_priority NOT NULL DEFAULT 'medium',
    status                  async_jobs_state NOT NULL DEFAULT 'pending',
    attempts                integer NOT NULL DEFAULT 0 CHECK (attempts >= 0),
    max_attempts            integer NOT NULL CHECK (max_attempts >= 1),
    run_at                  timestamptz NOT NULL,
    delay_tolerance_seconds double precision NOT NULL CHECK (delay_tolerance_seconds >= 0),
    deadline_at             timestamptz NOT NULL,
    timeout_seconds         double precision CHECK (timeout_seconds > 0),
    idempotency_key         text,
    webhook_url             text,
    progress_percent        real,
    progress_message        text,
    result                  jsonb,
    error                   jsonb,
    worker_id               text,
    lease_token             uuid,
    lease_expires_at        timestamptz,
    cancel_requested        boolean NOT NULL DEFAULT false,
    created_at              timestamptz NOT NULL DEFAULT now(),
    updated_at              timestamptz NOT NULL DEFAULT now(),
    started_at              timestamptz,
    finished_at             timestamptz,
    CONSTRAINT async_jobs_lease_only_when_running
        CHECK ((status = 'running') = (lease_token IS NOT NULL))
);

-- Idempotency keys are unique per tenant; enqueue relies on it with ON CONFLICT.
CREATE UNIQUE INDEX async_jobs_idempotency_key
    ON async_jobs (tenant_id, idempotency_key) WHERE idempotency_key IS NOT NULL;

-- The claim walks this index in its own order and sees only claimable rows.
CREATE INDEX async_jobs_claimable
    ON async_jobs (priority, deadline_at, run_at) WHERE status = 'pending';

-- Expired leases, for the reaper.
CREATE INDEX async_jobs_running_lease
    ON async_jobs (lease_expires_at) WHERE status = 'running';

-- Newest-first listings and retention.
CREATE INDEX async_jobs_created ON async_jobs (created_at DESC, id DESC);
CREATE INDEX async_jobs_tenant_created ON async_jobs (tenant_id, created_at DESC, id DESC);

-- A hot queue table: rows are updated and deleted constantly, so vacuum early and often,
-- and leave room on each page for HOT updates.
ALTER TABLE async_jobs SET (
    fillfactor = 80,
    autovacuum_vacuum_scale_factor = 0.01,
    autovacuum_vacuum_threshold = 1000,
    autovacuum_vacuum_cost_delay = 0,
    autovacuum_analyze_scale_factor = 0.02
);

-- One wake-up per inserting statement (not per row), delivered at commit, so jobs
-- inserted inside a caller's transaction wake workers only once they exist.
CREATE FUNCTION async_jobs_notify_inserted() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('async_jobs_inserted', '');
    RETURN NULL;
END;
$$;

CREATE TRIGGER async_jobs_inserted
    AFTER INSERT ON async_jobs
    FOR EACH STATEMENT EXECUTE FUNCTION async_jobs_notify_inserted();

-- The claim. It lives in a function for one reason: its SET clause pins the plan to a walk
-- of async_jobs_claimable in the claim's own order. Without it, a table whose statistics
-- are stale (just filled after a TRUNCATE, or before autovacuum analyses a burst) gets a
-- bitmap scan that reads and sorts every pending row on every claim. The chosen ids are
-- collected into an array first, so the update finds its rows through the primary key (a
-- join with the CTE was planned as a scan of the whole table: a function's statements are
-- planned without knowing p_limit).
CREATE FUNCTION async_jobs_claim(
    p_limit integer,
    p_use_cases text[],
    p_types text[],
    p_worker_id text,
    p_lease_seconds double precision
) RETURNS SETOF async_jobs
LANGUAGE sql
SET enable_sort = off
SET enable_bitmapscan = off
AS $$
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
    WHERE j.id = ANY(ARRAY(
        SELECT id FROM async_jobs
        WHERE status = 'pending'
          AND run_at <= now()
          AND (cardinality(p_use_cases) = 0 OR use_case = ANY(p_use_cases))
          AND (cardinality(p_types) = 0 OR type = ANY(p_types))
        ORDER BY priority, deadline_at, run_at
        LIMIT p_limit
        FOR UPDATE SKIP LOCKED
    ))
    RETURNING j.*;
$$;
