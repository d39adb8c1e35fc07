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
-- timeout_seconds, idempotency_key, webhook_url, backoff_json (or null)]. A repeated
-- idempotency key inserts nothing (the first of a batch wins); the caller then reads the
-- existing job. run_at is absolute when given, else now + delay.
INSERT INTO async_jobs (
    id, tenant_id, use_case, type, payload, priority, max_attempts, run_at,
    delay_tolerance_seconds, deadline_at, timeout_seconds, idempotency_key, webhook_url,
    backoff, created_at, updated_at
)
SELECT
    u.id, u.tenant_id, u.use_case, u.type, u.payload, u.priority, u.max_attempts, u.run_at,
    u.tolerance, u.run_at + u.tolerance, u.timeout_seconds, u.idempotency_key,
    u.webhook_url, u.backoff, u.now, u.now
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
        e.value ->> 13 AS backoff,
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
-- and lease token of the outcome. A released attempt is handed back without counting. A job
-- whose cancellation was asked (j.cancel_requested) ends cancelled instead of being retried
-- or handed back. Every counted attempt that did not succeed joins the history, the latest
-- 50 kept (json_insert at '$[#]' appends). SET expressions see the row as it was, as in PostgreSQL.
UPDATE async_jobs AS j
SET status = CASE
        WHEN u.kind IN ('retry', 'released') AND j.cancel_requested THEN 'cancelled'
        WHEN u.kind IN ('retry', 'released') THEN 'pending'
        ELSE u.kind END,
    attempts = j.attempts - (u.kind = 'released' AND NOT j.cancel_requested),
    result = u.result,
    error = COALESCE(u.error, j.error),
    reason = CASE
        WHEN u.kind = 'cancelled' OR (u.kind IN ('retry', 'released') AND j.cancel_requested)
            THEN 'cancelled'
        WHEN u.kind = 'released' THEN j.reason END,
    history = CASE
        WHEN u.kind = 'succeeded' OR (u.kind = 'released' AND NOT j.cancel_requested)
            THEN j.history
        ELSE json_insert(
            CASE WHEN json_array_length(j.history) >= 50 THEN json_remove(j.history, '$[0]')
                 ELSE j.history END,
            '$[#]', json_object(
                'attempt', j.attempts,
                'worker_id', j.worker_id,
                'started_at', j.started_at,
                'finished_at', u.now,
                'outcome', CASE WHEN u.kind IN ('retry', 'released') AND j.cancel_requested
                                THEN 'cancelled' ELSE u.kind END,
                'error_type', u.error ->> '$.type',
                'error_message', substr(u.error ->> '$.message', 1, 500)))
        END,
    run_at = CASE WHEN u.kind = 'retry' AND NOT j.cancel_requested THEN u.now + u.delay
                  ELSE j.run_at END,
    deadline_at = CASE WHEN u.kind = 'retry' AND NOT j.cancel_requested
                       THEN u.now + u.delay + j.delay_tolerance_seconds
                       ELSE j.deadline_at END,
    started_at = CASE WHEN u.kind = 'released' AND NOT j.cancel_requested THEN NULL
                      ELSE j.started_at END,
    finished_at = CASE WHEN u.kind IN ('succeeded', 'failed', 'cancelled') OR j.cancel_requested
                       THEN u.now END,
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
-- :claims is a JSON array of [id, attempt, lease_token]; fenced like record_outcomes. It
-- also tells the worker which of its jobs are to be cancelled.
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
RETURNING id, cancel_requested;

-- name: record_progress
-- :updates is a JSON array of [id, attempt, lease_token, percent, message]; fenced like an
-- outcome: only the attempt that holds the lease may report progress.
UPDATE async_jobs AS j
SET progress_percent = u.percent,
    progress_message = u.message,
    updated_at = u.now
FROM (
    SELECT
        e.value ->> 0 AS id,
        e.value ->> 1 AS attempt,
        e.value ->> 2 AS token,
        e.value ->> 3 AS percent,
        e.value ->> 4 AS message,
        round((julianday('now') - 2440587.5) * 86400000.0) / 1000.0 AS now
    FROM json_each(:updates) AS e
) AS u
WHERE j.id = u.id
  AND j.status = 'running'
  AND j.attempts = u.attempt
  AND j.lease_token = u.token
RETURNING id;

-- name: reap_expired_leases
-- Running jobs whose lease expired by the database clock: the attempt counts and ends
-- `worker_lost`; the job is due again at once, or failed when its attempts are spent, or
-- cancelled when that was asked. The caller holds the write lock (BEGIN IMMEDIATE) and the
-- guard is checked in this one statement, so a job completed meanwhile is no longer running
-- with an expired lease and is not touched. Walks async_jobs_running_lease.
UPDATE async_jobs AS j
SET status = CASE WHEN j.cancel_requested THEN 'cancelled'
                  WHEN j.attempts >= j.max_attempts THEN 'failed'
                  ELSE 'pending' END,
    error = json_object(
        'type', 'WorkerLost',
        'message', printf('the lease of attempt %d expired: worker %s stopped renewing it',
                          j.attempts, coalesce(j.worker_id, '?')),
        'traceback', NULL),
    reason = CASE WHEN j.cancel_requested THEN 'cancelled' ELSE 'worker_lost' END,
    history = json_insert(
        CASE WHEN json_array_length(j.history) >= 50 THEN json_remove(j.history, '$[0]')
             ELSE j.history END,
        '$[#]', json_object(
            'attempt', j.attempts,
            'worker_id', j.worker_id,
            'started_at', j.started_at,
            'finished_at', c.now,
            'outcome', 'worker_lost',
            'error_type', 'WorkerLost',
            'error_message', 'the lease expired')),
    run_at = CASE WHEN j.cancel_requested OR j.attempts >= j.max_attempts THEN j.run_at
                  ELSE c.now END,
    deadline_at = CASE WHEN j.cancel_requested OR j.attempts >= j.max_attempts
                       THEN j.deadline_at
                       ELSE c.now + j.delay_tolerance_seconds END,
    finished_at = CASE WHEN j.cancel_requested OR j.attempts >= j.max_attempts
                       THEN c.now END,
    lease_token = NULL,
    lease_expires_at = NULL,
    updated_at = c.now
FROM (SELECT round((julianday('now') - 2440587.5) * 86400000.0) / 1000.0 AS now) AS c
WHERE j.id IN (
        SELECT id FROM async_jobs
        WHERE status = 'running'
          AND lease_expires_at < round((julianday('now') - 2440587.5) * 86400000.0) / 1000.0
        ORDER BY lease_expires_at
        LIMIT :limit)
  AND j.status = 'running'
  AND j.lease_expires_at < c.now
RETURNING *;

-- name: cancel_job
-- Pending or queued: cancelled at once. Running: flagged (the store then tells its
-- in-process watchers; other processes learn it when they renew their leases). A running
-- job already flagged and terminal jobs are not matched; the caller reads them as they
-- stand.
UPDATE async_jobs AS j
SET status = CASE WHEN j.status = 'running' THEN j.status ELSE 'cancelled' END,
    cancel_requested = 1,
    reason = 'cancelled',
    finished_at = CASE WHEN j.status = 'running' THEN j.finished_at ELSE c.now END,
    updated_at = c.now
FROM (SELECT round((julianday('now') - 2440587.5) * 86400000.0) / 1000.0 AS now) AS c
WHERE j.id = :id
  AND (:tenant_id IS NULL OR j.tenant_id = :tenant_id)
  AND (j.status IN ('pending', 'queued') OR (j.status = 'running' AND NOT j.cancel_requested))
RETURNING *;

-- name: retry_job
-- A failed or cancelled job goes back to pending, due now, with at least one attempt left;
-- its history and last error stay.
UPDATE async_jobs AS j
SET status = 'pending',
    run_at = c.now,
    deadline_at = c.now + j.delay_tolerance_seconds,
    max_attempts = max(j.max_attempts, j.attempts + 1),
    cancel_requested = 0,
    reason = 'manual_retry',
    result = NULL,
    progress_percent = NULL,
    progress_message = NULL,
    worker_id = NULL,
    started_at = NULL,
    finished_at = NULL,
    updated_at = c.now
FROM (SELECT round((julianday('now') - 2440587.5) * 86400000.0) / 1000.0 AS now) AS c
WHERE j.id = :id
  AND (:tenant_id IS NULL OR j.tenant_id = :tenant_id)
  AND j.status IN ('failed', 'cancelled')
RETURNING *;
