-- Every SQL statement the SQLite store runs at run time. Values are always parameters.
--
-- Batches arrive as one JSON array parameter, unnested with json_each (the counterpart of
-- PostgreSQL's unnest), so that one statement handles one job or many and RETURNING says
-- which rows it changed.
--
-- "now" is the database clock as unix epoch seconds, rounded to the millisecond SQLite
-- resolves so that it survives the round trip through a Python datetime exactly:
--     round((julianday('now') - 2440587.5) * 86400000.0) / 1000.0
-- SQLite keeps 'now' fixed for the whole of one statement, so every use agrees.

-- name: journal_mode_wal
-- Readers and the one writer do not block each other; returns the mode in force.
PRAGMA journal_mode = WAL;

-- name: synchronous_normal
-- With WAL, NORMAL syncs at checkpoints only: committed jobs survive a crash of the
-- process; a power cut may lose the last transactions.
PRAGMA synchronous = NORMAL;

-- name: begin_immediate
-- Takes the write lock at once, so two processes cannot both read a job as claimable.
BEGIN IMMEDIATE;

-- name: commit
COMMIT;

-- name: rollback
ROLLBACK;

-- name: ping
-- Reads the file, not just the library: a SELECT 1 would answer without touching the disk.
SELECT count(*) FROM sqlite_schema;

-- name: migrations_table
CREATE TABLE IF NOT EXISTS async_jobs_migrations (
    name       TEXT NOT NULL PRIMARY KEY,
    applied_at REAL NOT NULL
) STRICT;

-- name: migrations_applied
SELECT name FROM async_jobs_migrations ORDER BY name;

-- name: migration_record
INSERT INTO async_jobs_migrations (name, applied_at)
VALUES (:name, round((julianday('now') - 2440587.5) * 86400000.0) / 1000.0);

-- name: insert_jobs
-- :jobs is a JSON array of [id, tenant_id, use_case, type, payload_json, priority,
-- max_attempts, delay_seconds, run_at (epoch or null), delay_tolerance_seconds,
-- timeout_seconds, idempotency_key, webhook_url]. A repeated idempotency key inserts
-- nothing (the first of a batch wins); the caller then reads the existing job. run_at is
-- absolute when given, else now + delay.
INSERT INTO async_jobs (
    id, tenant_id, use_case, type, payload, priority, max_attempts, run_at,
    delay_tolerance_seconds, deadline_at, timeout_seconds, idempotency_key, webhook_url,
    created_at, updated_at
)
SELECT
    u.id, u.tenant_id, u.use_case, u.type, u.payload, u.priority, u.max_attempts, u.run_at,
    u.tolerance, u.run_at + u.tolerance, u.timeout_seconds, u.idempotency_key,
    u.webhook_url, u.now, u.now
FROM (
    SELECT
        e.key AS seq,
        e.value ->> 0 AS id,
        e.value ->> 1 AS tenant_id,
        e.value ->> 2 AS use_case,
        e.value ->> 3 AS type,
        e.value ->> 4 AS payload,
        e.value ->> 5 AS priority,
        e.value ->> 6 AS max_attempts,
        COALESCE(e.value ->> 8, c.now + (e.value ->> 7)) AS run_at,
        e.value ->> 9 AS tolerance,
        e.value ->> 10 AS timeout_seconds,
        e.value ->> 11 AS idempotency_key,
        e.value ->> 12 AS webhook_url,
        c.now AS now
    FROM json_each(:jobs) AS e,
         (SELECT round((julianday('now') - 2440587.5) * 86400000.0) / 1000.0 AS now) AS c
) AS u
WHERE true
ORDER BY u.seq
ON CONFLICT (tenant_id, idempotency_key) WHERE idempotency_key IS NOT NULL DO NOTHING
RETURNING id, run_at, deadline_at, created_at;

-- name: get_jobs_by_idempotency_key
-- :keys is a JSON array of [tenant_id, idempotency_key] pairs.
SELECT * FROM async_jobs
WHERE idempotency_key IS NOT NULL
  AND (tenant_id, idempotency_key) IN (
      SELECT k.value ->> 0, k.value ->> 1 FROM json_each(:keys) AS k
  );

-- name: get_job
SELECT * FROM async_jobs WHERE id = :id AND (:tenant_id IS NULL OR tenant_id = :tenant_id);

-- name: list_jobs
-- Newest first over every tenant; the cursor is the (created_at, id) of the last row of
-- the previous page, +infinity and '' for the first page so the index range always applies.
SELECT * FROM async_jobs
WHERE (created_at, id) < (:after_created_at, :after_id)
  AND (:status IS NULL OR status = :status)
  AND (:use_case IS NULL OR use_case = :use_case)
  AND (:type IS NULL OR type = :type)
  AND (:created_after IS NULL OR created_at > :created_after)
  AND (:created_before IS NULL OR created_at < :created_before)
ORDER BY created_at DESC, id DESC
LIMIT :limit;

-- name: list_tenant_jobs
-- The same for one tenant, on the tenant's own index.
SELECT * FROM async_jobs
WHERE tenant_id = :tenant_id
  AND (created_at, id) < (:after_created_at, :after_id)
  AND (:status IS NULL OR status = :status)
  AND (:use_case IS NULL OR use_case = :use_case)
  AND (:type IS NULL OR type = :type)
  AND (:created_after IS NULL OR created_at > :created_after)
  AND (:created_before IS NULL OR created_at < :created_before)
ORDER BY created_at DESC, id DESC
LIMIT :limit;

-- name: claim_jobs
-- Due pending jobs in priority, then deadline order, walked on async_jobs_claimable. The
-- caller holds the write lock (BEGIN IMMEDIATE), so no other claimer sees these rows as
-- pending. :use_cases and :types are JSON arrays; empty means any. The lease token is a
-- random version-4 UUID made per row.
UPDATE async_jobs
SET status = 'running',
    attempts = attempts + 1,
    lease_token = lower(
        hex(randomblob(4)) || '-' || hex(randomblob(2)) || '-4'
        || substr(hex(randomblob(2)), 2) || '-'
        || substr('89ab', 1 + (random() & 3), 1) || substr(hex(randomblob(2)), 2) || '-'
        || hex(randomblob(6))
    ),
    lease_expires_at = round((julianday('now') - 2440587.5) * 86400000.0) / 1000.0
        + :lease_seconds,
    worker_id = :worker_id,
    started_at = round((julianday('now') - 2440587.5) * 86400000.0) / 1000.0,
    finished_at = NULL,
    progress_percent = NULL,
    progress_message = NULL,
    updated_at = round((julianday('now') - 2440587.5) * 86400000.0) / 1000.0
WHERE id IN (
    SELECT id FROM async_jobs
    WHERE status = 'pending'
      AND run_at <= round((julianday('now') - 2440587.5) * 86400000.0) / 1000.0
      AND (json_array_length(:use_cases) = 0
           OR use_case IN (SELECT value FROM json_each(:use_cases)))
      AND (json_array_length(:types) = 0 OR type IN (SELECT value FROM json_each(:types)))
    ORDER BY priority_rank, deadline_at, run_at
    LIMIT :limit
)
RETURNING *;

-- name: record_outcomes
-- :outcomes is a JSON array of [id, attempt, lease_token, kind, result_json, error_json,
-- retry_delay_seconds]. Fenced: a row changes only while it is running under the attempt
-- and lease token of the outcome. A released attempt is handed back without counting.
UPDATE async_jobs AS j
SET status = CASE WHEN u.kind IN ('succeeded', 'failed', 'cancelled') THEN u.kind
                  ELSE 'pending' END,
    attempts = j.attempts - (u.kind = 'released'),
    result = u.result,
    error = COALESCE(u.error, j.error),
    run_at = CASE WHEN u.kind = 'retry' THEN u.now + u.delay ELSE j.run_at END,
    deadline_at = CASE WHEN u.kind = 'retry' THEN u.now + u.delay + j.delay_tolerance_seconds
                       ELSE j.deadline_at END,
    started_at = CASE WHEN u.kind = 'released' THEN NULL ELSE j.started_at END,
    finished_at = CASE WHEN u.kind IN ('succeeded', 'failed', 'cancelled') THEN u.now END,
    lease_token = NULL,
    lease_expires_at = NULL,
    updated_at = u.now
FROM (
    SELECT
        e.value ->> 0 AS id,
        e.value ->> 1 AS attempt,
        e.value ->> 2 AS token,
        e.value ->> 3 AS kind,
        e.value ->> 4 AS result,
        e.value ->> 5 AS error,
        e.value ->> 6 AS delay,
        round((julianday('now') - 2440587.5) * 86400000.0) / 1000.0 AS now
    FROM json_each(:outcomes) AS e
) AS u
WHERE j.id = u.id
  AND j.status = 'running'
  AND j.attempts = u.attempt
  AND j.lease_token = u.token
RETURNING id;

-- name: extend_leases
-- :claims is a JSON array of [id, attempt, lease_token]; fenced like record_outcomes.
UPDATE async_jobs AS j
SET lease_expires_at = u.now + :lease_seconds,
    updated_at = u.now
FROM (
    SELECT
        e.value ->> 0 AS id,
        e.value ->> 1 AS attempt,
        e.value ->> 2 AS token,
        round((julianday('now') - 2440587.5) * 86400000.0) / 1000.0 AS now
    FROM json_each(:claims) AS e
) AS u
WHERE j.id = u.id
  AND j.status = 'running'
  AND j.attempts = u.attempt
  AND j.lease_token = u.token
RETURNING id;
