-- The jobs table and the indexes of the claim path, for SQLite 3.38 or newer.
--
-- Mirrors the PostgreSQL schema. SQLite has no enum, uuid, jsonb or timestamptz, so:
-- states and priorities are TEXT checked against their allowed values; ids and lease tokens
-- are canonical lowercase UUID text (which sorts like PostgreSQL's uuid); payload, result
-- and error are JSON text; times are REAL unix epoch seconds (UTC) taken from the database
-- clock, rounded to the millisecond that SQLite's clock resolves.

CREATE TABLE async_jobs (
    id                      TEXT NOT NULL PRIMARY KEY,
    tenant_id               TEXT NOT NULL,
    use_case                TEXT NOT NULL,
    type                    TEXT NOT NULL,
    payload                 TEXT NOT NULL DEFAULT '{}',
    priority                TEXT NOT NULL DEFAULT 'medium'
        CHECK (priority IN ('critical', 'high', 'medium', 'low')),
    -- Order of importance, so that ORDER BY runs critical (0) first and low (3) last.
    priority_rank           INTEGER GENERATED ALWAYS AS (
        CASE priority
            WHEN 'critical' THEN 0
            WHEN 'high' THEN 1
            WHEN 'medium' THEN 2
            ELSE 3
        END
    ) STORED,
    status                  TEXT NOT NULL DEFAULT 'pending'
        CHECK (status IN ('pending', 'queued', 'running', 'succeeded', 'failed', 'cancelled')),
    attempts                INTEGER NOT NULL DEFAULT 0 CHECK (attempts >= 0),
    max_attempts            INTEGER NOT NULL CHECK (max_attempts >= 1),
    run_at                  REAL NOT NULL,
    delay_tolerance_seconds REAL NOT NULL CHECK (delay_tolerance_seconds >= 0),
    deadline_at             REAL NOT NULL,
    timeout_seconds         REAL CHECK (timeout_seconds > 0),
    idempotency_key         TEXT,
    webhook_url             TEXT,
    progress_percent        REAL,
    progress_message        TEXT,
    result                  TEXT,
    error                   TEXT,
    worker_id               TEXT,
    lease_token             TEXT,
    lease_expires_at        REAL,
    cancel_requested        INTEGER NOT NULL DEFAULT 0 CHECK (cancel_requested IN (0, 1)),
    created_at              REAL NOT NULL
        DEFAULT (round((julianday('now') - 2440587.5) * 86400000.0) / 1000.0),
    updated_at              REAL NOT NULL
        DEFAULT (round((julianday('now') - 2440587.5) * 86400000.0) / 1000.0),
    started_at              REAL,
    finished_at             REAL,
    CONSTRAINT async_jobs_lease_only_when_running
        CHECK ((status = 'running') = (lease_token IS NOT NULL))
) STRICT;

-- Idempotency keys are unique per tenant; enqueue relies on it with ON CONFLICT.
CREATE UNIQUE INDEX async_jobs_idempotency_key
    ON async_jobs (tenant_id, idempotency_key) WHERE idempotency_key IS NOT NULL;

-- The claim walks this index in its own order and sees only claimable rows.
CREATE INDEX async_jobs_claimable
    ON async_jobs (priority_rank, deadline_at, run_at) WHERE status = 'pending';

-- Expired leases, for the reaper.
CREATE INDEX async_jobs_running_lease
    ON async_jobs (lease_expires_at) WHERE status = 'running';

-- Newest-first listings and retention.
CREATE INDEX async_jobs_created ON async_jobs (created_at DESC, id DESC);
CREATE INDEX async_jobs_tenant_created ON async_jobs (tenant_id, created_at DESC, id DESC);
