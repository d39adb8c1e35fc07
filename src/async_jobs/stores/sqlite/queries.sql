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

-- name: migrations_table_exists
SELECT count(*) AS n FROM sqlite_master WHERE type = 'table' AND name = 'async_jobs_migrations';

-- name: migration_record
INSERT INTO async_jobs_migrations (name, applied_at)
VALUES (:name, round((julianday('now') - 2440587.5) * 86400000.0) / 1000.0);

-- name: insert_jobs
-- :jobs is a JSON array of [id, tenant_id, use_case, type, payload_json, priority,
-- max_attempts, delay_seconds, run_at (epoch or null), delay_tolerance_seconds,
-- timeout_seconds, idempotency_key, webhook_url, backoff_json (or null), expires_at (epoch
-- or null), created_at (epoch: the id's time)]; :trace_context is the whole batch's (one
-- enqueue call, one context). A repeated idempotency key inserts nothing (the first of a
-- batch wins); the caller then reads the existing job. run_at is absolute when given, else
-- now + delay.
INSERT INTO async_jobs (
    id, tenant_id, use_case, type, payload, priority, max_attempts, run_at,
    delay_tolerance_seconds, deadline_at, timeout_seconds, idempotency_key, webhook_url,
    backoff, expires_at, created_at, updated_at, trace_context, delayed
)
SELECT
    u.id, u.tenant_id, u.use_case, u.type, u.payload, u.priority, u.max_attempts, u.run_at,
    u.tolerance, u.run_at + u.tolerance, u.timeout_seconds, u.idempotency_key,
    u.webhook_url, u.backoff, u.expires_at, u.created_at, u.created_at, :trace_context,
    u.run_at > u.now
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
        e.value ->> 14 AS expires_at,
        e.value ->> 15 AS created_at,
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

-- part: job_filters
-- The filters of list_jobs, list_tenant_jobs, count_jobs and scan_jobs besides the tenant:
-- each one NULL leaves out.
AND (:status IS NULL OR status = :status)
AND (:use_case IS NULL OR use_case = :use_case)
AND (:type IS NULL OR type = :type)
AND (:created_after IS NULL OR created_at > :created_after)
AND (:created_before IS NULL OR created_at < :created_before)
AND (:priority IS NULL OR priority = :priority)

-- name: list_jobs
-- Newest first over every tenant; the cursor is the (created_at, id) of the last row of
-- the previous page, +infinity and '' for the first page so the index range always applies.
SELECT * FROM async_jobs
WHERE (created_at, id) < (:after_created_at, :after_id)
  -- use: job_filters
ORDER BY created_at DESC, id DESC
LIMIT :limit;

-- name: list_tenant_jobs
-- The same for one tenant, on the tenant's own index.
SELECT * FROM async_jobs
WHERE tenant_id = :tenant_id
  AND (created_at, id) < (:after_created_at, :after_id)
  -- use: job_filters
ORDER BY created_at DESC, id DESC
LIMIT :limit;

-- name: now
-- The database clock, once for an operation of several statements that must agree on it.
SELECT round((julianday('now') - 2440587.5) * 86400000.0) / 1000.0 AS now;

-- name: claim_undelay
-- The claim, step 0: the marked rows (written for the future: 0015) that are due now are
-- unmarked, a range of async_jobs_delayed (usually empty). Under the claim's write lock: after
-- it, every due pending row is unmarked.
UPDATE async_jobs SET delayed = 0
WHERE status = 'pending' AND delayed = 1 AND run_at <= :now;

-- name: claim_groups
-- The claim, step 1: the (use case, tenant) pairs that have due pending jobs, found by a skip
-- scan of async_jobs_claimable for the use cases (one probe per use case) and one of
-- async_jobs_pending_ready for the pairs, which holds no marked row: a pair whose jobs were
-- all written for the future is never visited (0015). Per pair, one probe of the same index
-- gives its earliest unmarked run_at (rows written before 0015 are unmarked; 0012).
-- Paused use cases, and those the claim does not ask for (:use_cases, a JSON array; empty
-- means any), are left out. The caller holds the write lock (BEGIN IMMEDIATE) for every
-- step, so no other claimer counts or takes anything meanwhile.
WITH RECURSIVE
use_cases(name) AS (
    SELECT min(use_case) FROM async_jobs WHERE status = 'pending'
    UNION ALL
    SELECT (SELECT min(a.use_case) FROM async_jobs AS a
            WHERE a.status = 'pending' AND a.use_case > u.name)
    FROM use_cases AS u WHERE u.name IS NOT NULL
),
pairs(use_case, tenant_id) AS (
    SELECT u.name, (SELECT min(a.tenant_id) FROM async_jobs AS a
                    WHERE a.status = 'pending' AND a.delayed = 0 AND a.use_case = u.name)
    FROM use_cases AS u
    WHERE u.name IS NOT NULL
      AND (json_array_length(:use_cases) = 0
           OR u.name IN (SELECT value FROM json_each(:use_cases)))
      AND NOT EXISTS (SELECT 1 FROM async_jobs_use_cases AS p WHERE p.name = u.name AND p.paused)
    UNION ALL
    SELECT p.use_case, (SELECT min(a.tenant_id) FROM async_jobs AS a
                        WHERE a.status = 'pending' AND a.delayed = 0
                          AND a.use_case = p.use_case AND a.tenant_id > p.tenant_id)
    FROM pairs AS p WHERE p.tenant_id IS NOT NULL
)
SELECT p.use_case, p.tenant_id FROM pairs AS p
WHERE p.tenant_id IS NOT NULL
  AND (SELECT min(a.run_at) FROM async_jobs AS a
       WHERE a.status = 'pending' AND a.delayed = 0 AND a.use_case = p.use_case
         AND a.tenant_id = p.tenant_id) <= :now;

-- name: claim_active
-- Step 2, for use cases with a cap or a quota only (:use_cases, a JSON array): the jobs
-- holding a slot (queued or running), per use case and tenant, from the async_jobs_active
-- index alone.
SELECT use_case, tenant_id, count(*) AS n
FROM async_jobs
WHERE status IN ('queued', 'running')
  AND use_case IN (SELECT value FROM json_each(:use_cases))
GROUP BY use_case, tenant_id;

-- name: claim_buckets
-- Step 3, with rate quotas only: the stored buckets of the pairs (:pairs, a JSON array of
-- [tenant_id, use_case]).
SELECT b.tenant_id, b.use_case, b.tokens, b.refilled_at
FROM async_jobs_rate_buckets AS b
WHERE (b.tenant_id, b.use_case) IN (SELECT p.value ->> 0, p.value ->> 1 FROM json_each(:pairs) AS p);

-- name: claim_candidates
-- Step 4: the first `take` due jobs of each pair (:groups, a JSON array of [use_case,
-- tenant_id, take]) in the pair's own order: priority, deadline, run_at, then insertion
-- (rowid, the last key of every index). SQLite has no LATERAL and no LIMIT that may name an
-- outer column, so each group is walked on async_jobs_claimable one due job at a time: a
-- step seeks the next job of the same (priority, deadline, run_at) by rowid, else the first
-- job of the next such key by row value; each is an index seek, so a walk costs one probe
-- per job taken however long the backlog (the first seek needs no run_at <= :now: the job
-- before was due, and a second bound on run_at would cost it the seek on rowid). The
-- right-hand sides are expressions (x + 0),
-- not columns: a column there would give the comparison another affinity than the index
-- column's, and SQLite would then seek on the first column only.
WITH RECURSIVE
groups(use_case, tenant_id, take) AS (
    SELECT g.value ->> 0, g.value ->> 1, g.value ->> 2 FROM json_each(:groups) AS g
),
walk(use_case, tenant_id, take, turn, rid) AS (
    SELECT g.use_case, g.tenant_id, g.take, 1,
           (SELECT a.rowid FROM async_jobs AS a
            WHERE a.status = 'pending'
              AND a.use_case = g.use_case
              AND a.tenant_id = g.tenant_id
              AND a.run_at <= :now
              AND (a.expires_at IS NULL OR a.expires_at > :now)
              AND (json_array_length(:types) = 0
                   OR a.type IN (SELECT value FROM json_each(:types)))
            ORDER BY a.priority_rank, a.deadline_at, a.run_at, a.rowid
            LIMIT 1)
    FROM groups AS g
    WHERE g.take > 0
    UNION ALL
    SELECT w.use_case, w.tenant_id, w.take, w.turn + 1, coalesce(
           (SELECT a.rowid FROM async_jobs AS a
            WHERE a.status = 'pending'
              AND a.use_case = w.use_case
              AND a.tenant_id = w.tenant_id
              AND a.priority_rank = p.priority_rank + 0
              AND a.deadline_at = p.deadline_at + 0
              AND a.run_at = p.run_at + 0
              AND a.rowid > p.rowid
              AND (a.expires_at IS NULL OR a.expires_at > :now)
              AND (json_array_length(:types) = 0
                   OR a.type IN (SELECT value FROM json_each(:types)))
            ORDER BY a.rowid
            LIMIT 1),
           (SELECT a.rowid FROM async_jobs AS a
            WHERE a.status = 'pending'
              AND a.use_case = w.use_case
              AND a.tenant_id = w.tenant_id
              AND (a.priority_rank, a.deadline_at, a.run_at)
                  > (p.priority_rank + 0, p.deadline_at + 0, p.run_at + 0)
              AND a.run_at <= :now
              AND (a.expires_at IS NULL OR a.expires_at > :now)
              AND (json_array_length(:types) = 0
                   OR a.type IN (SELECT value FROM json_each(:types)))
            ORDER BY a.priority_rank, a.deadline_at, a.run_at, a.rowid
            LIMIT 1))
    FROM walk AS w JOIN async_jobs AS p ON p.rowid = w.rid
    WHERE w.turn < w.take
)
SELECT j.rowid AS rid, j.use_case, j.tenant_id, j.priority_rank, j.deadline_at, j.run_at, w.turn
FROM walk AS w JOIN async_jobs AS j ON j.rowid = w.rid
ORDER BY j.use_case, j.tenant_id, w.turn;

-- name: claim_jobs
-- Step 5: the jobs domain.scheduling.plan_claim chose (:rowids, a JSON array: rowids, as
-- step 4 found them, save a lookup of each id) start, if still pending (the same
-- transaction: they are); with :dispatch they become queued instead, with a dispatch id
-- and its deadline, attempts unchanged. Lease tokens and dispatch ids are random
-- version-4 UUIDs made per row.
UPDATE async_jobs
SET status = CASE WHEN :dispatch THEN 'queued' ELSE 'running' END,
    attempts = attempts + CASE WHEN :dispatch THEN 0 ELSE 1 END,
    lease_token = CASE WHEN :dispatch THEN NULL ELSE lower(
        hex(randomblob(4)) || '-' || hex(randomblob(2)) || '-4'
        || substr(hex(randomblob(2)), 2) || '-'
        || substr('89ab', 1 + (random() & 3), 1) || substr(hex(randomblob(2)), 2) || '-'
        || hex(randomblob(6))
    ) END,
    lease_expires_at = CASE WHEN :dispatch THEN NULL ELSE :now + :lease_seconds END,
    worker_id = CASE WHEN :dispatch THEN NULL ELSE :worker_id END,
    started_at = CASE WHEN :dispatch THEN started_at ELSE :now END,
    finished_at = CASE WHEN :dispatch THEN finished_at END,
    progress_percent = NULL,
    progress_message = NULL,
    dispatch_id = CASE WHEN :dispatch THEN lower(
        hex(randomblob(4)) || '-' || hex(randomblob(2)) || '-4'
        || substr(hex(randomblob(2)), 2) || '-'
        || substr('89ab', 1 + (random() & 3), 1) || substr(hex(randomblob(2)), 2) || '-'
        || hex(randomblob(6))
    ) END,
    dispatch_expires_at = CASE WHEN :dispatch THEN :now + :lease_seconds END,
    updated_at = :now
WHERE rowid IN (SELECT value FROM json_each(:rowids))
  AND status = 'pending'
RETURNING *;

-- name: claim_dispatched
-- A worker starts the jobs its broker messages name (:tickets, a JSON array of [id,
-- attempt, dispatch id]): only a job still queued under that dispatch, for that attempt,
-- and not expired.
UPDATE async_jobs AS j
SET status = 'running',
    attempts = j.attempts + 1,
    lease_token = lower(
        hex(randomblob(4)) || '-' || hex(randomblob(2)) || '-4'
        || substr(hex(randomblob(2)), 2) || '-'
        || substr('89ab', 1 + (random() & 3), 1) || substr(hex(randomblob(2)), 2) || '-'
        || hex(randomblob(6))
    ),
    lease_expires_at = c.now + :lease_seconds,
    worker_id = :worker_id,
    started_at = c.now,
    finished_at = NULL,
    progress_percent = NULL,
    progress_message = NULL,
    dispatch_id = NULL,
    dispatch_expires_at = NULL,
    updated_at = c.now
FROM (SELECT round((julianday('now') - 2440587.5) * 86400000.0) / 1000.0 AS now) AS c,
     (SELECT t.value ->> 0 AS id, t.value ->> 1 AS attempt, t.value ->> 2 AS dispatch_id
      FROM json_each(:tickets) AS t) AS t
WHERE j.id = t.id
  AND j.status = 'queued'
  AND j.dispatch_id = t.dispatch_id
  AND j.attempts + 1 = t.attempt
  AND (j.expires_at IS NULL OR j.expires_at > c.now)
RETURNING *;

-- name: requeue_lapsed_dispatches
-- Dispatches nobody claimed by their deadline go back to pending (no attempt counted),
-- oldest first, at most :limit.
UPDATE async_jobs AS j
SET status = 'pending', dispatch_id = NULL, dispatch_expires_at = NULL, updated_at = c.now
FROM (SELECT round((julianday('now') - 2440587.5) * 86400000.0) / 1000.0 AS now) AS c
WHERE j.id IN (
        SELECT id FROM async_jobs
        WHERE status = 'queued'
          AND dispatch_expires_at < round((julianday('now') - 2440587.5) * 86400000.0) / 1000.0
        ORDER BY dispatch_expires_at
        LIMIT :limit)
  AND j.status = 'queued'
RETURNING id;

-- name: requeue_dispatches
-- Named dispatches (:tickets, a JSON array of [id, dispatch id]: sends that failed) go
-- back to pending, if the jobs are still queued under them.
UPDATE async_jobs AS j
SET status = 'pending', dispatch_id = NULL, dispatch_expires_at = NULL, updated_at = c.now
FROM (SELECT round((julianday('now') - 2440587.5) * 86400000.0) / 1000.0 AS now) AS c,
     (SELECT t.value ->> 0 AS id, t.value ->> 1 AS dispatch_id
      FROM json_each(:tickets) AS t) AS t
WHERE j.id = t.id AND j.status = 'queued' AND j.dispatch_id = t.dispatch_id
RETURNING id;

-- name: save_buckets
-- Step 6: the buckets the claim drew from (:buckets, a JSON array of [tenant_id, use_case,
-- tokens left]), refilled as of :now.
INSERT INTO async_jobs_rate_buckets (tenant_id, use_case, tokens, refilled_at)
SELECT b.value ->> 0, b.value ->> 1, b.value ->> 2, :now
FROM json_each(:buckets) AS b
WHERE true
ON CONFLICT (tenant_id, use_case)
DO UPDATE SET tokens = excluded.tokens, refilled_at = excluded.refilled_at;

-- part: held_lease
-- A worker's writes to the jobs it holds (record_outcomes, extend_leases, record_progress)
-- come as a JSON array whose entries (e) start with [id, attempt, lease_token]: the job, and
-- the attempt and lease it holds.
e.value ->> 0 AS id,
e.value ->> 1 AS attempt,
e.value ->> 2 AS token,

-- part: lease_fence
-- Their fence: a row (j) changes only while it is running under the attempt and lease
-- token of the entry (u).
WHERE j.id = u.id
  AND j.status = 'running'
  AND j.attempts = u.attempt
  AND j.lease_token = u.token

-- part: capped_history
-- The history of a job (j) with room for one more entry, the first argument of the
-- json_insert that appends it: the oldest entry goes once :max_history are kept.
CASE WHEN json_array_length(j.history) >= :max_history
     THEN json_remove(j.history, '$[0]')
     ELSE j.history END,

-- name: record_outcomes
-- :outcomes is a JSON array of [id, attempt, lease_token, kind, result_json, error_json,
-- retry_delay_seconds]. Fenced (lease_fence): a row changes only while it is running under
-- the attempt and lease token of the outcome. A released attempt is handed back without counting. A job
-- whose cancellation was asked (j.cancel_requested) ends cancelled instead of being retried
-- or handed back. Every counted attempt that did not succeed joins the history, the latest
-- :max_history kept (json_insert at '$[#]' appends), its error message cut to
-- :error_limit characters. SET expressions see the row as it was, as in PostgreSQL. The
-- rules are domain/transitions.py's, checked by tests/integration/test_transitions.py.
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
            -- use: capped_history
            '$[#]', json_object(
                'attempt', j.attempts,
                'worker_id', j.worker_id,
                'started_at', j.started_at,
                'finished_at', u.now,
                'outcome', CASE WHEN u.kind IN ('retry', 'released') AND j.cancel_requested
                                THEN 'cancelled' ELSE u.kind END,
                'error_type', u.error ->> '$.type',
                'error_message', substr(u.error ->> '$.message', 1, :error_limit)))
        END,
    run_at = CASE WHEN u.kind = 'retry' AND NOT j.cancel_requested THEN u.now + u.delay
                  ELSE j.run_at END,
    delayed = u.kind = 'retry' AND NOT j.cancel_requested AND coalesce(u.delay, 0) > 0,
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
        -- use: held_lease
        e.value ->> 3 AS kind,
        e.value ->> 4 AS result,
        e.value ->> 5 AS error,
        e.value ->> 6 AS delay,
        round((julianday('now') - 2440587.5) * 86400000.0) / 1000.0 AS now
    FROM json_each(:outcomes) AS e
) AS u
-- use: lease_fence
RETURNING id;

-- name: extend_leases
-- :claims is a JSON array of [id, attempt, lease_token]; fenced like record_outcomes. It
-- also tells the worker which of its jobs are to be cancelled.
UPDATE async_jobs AS j
SET lease_expires_at = u.now + :lease_seconds,
    updated_at = u.now
FROM (
    SELECT
        -- use: held_lease
        round((julianday('now') - 2440587.5) * 86400000.0) / 1000.0 AS now
    FROM json_each(:claims) AS e
) AS u
-- use: lease_fence
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
        -- use: held_lease
        e.value ->> 3 AS percent,
        e.value ->> 4 AS message,
        round((julianday('now') - 2440587.5) * 86400000.0) / 1000.0 AS now
    FROM json_each(:updates) AS e
) AS u
-- use: lease_fence
RETURNING id;

-- name: reap_expired_leases
-- Running jobs whose lease expired by the database clock: the attempt counts and ends
-- `worker_lost`; the job is due again at once, or failed when its attempts are spent, or
-- cancelled when that was asked. The caller holds the write lock (BEGIN IMMEDIATE) and the
-- guard is checked in this one statement, so a job completed meanwhile is no longer running
-- with an expired lease and is not touched. Reads the running jobs on async_jobs_active
-- (status = 'running' is also written as part of its IN, so that SQLite sees that the
-- partial index applies): few, as every use case is capped. The history keeps the latest
-- :max_history attempts. The rules are domain/transitions.py's.
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
        -- use: capped_history
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
        WHERE status IN ('queued', 'running') AND status = 'running'
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
-- A failed or cancelled job not past its expires_at goes back to pending, due now, with at
-- least one attempt left; its history and last error stay.
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
  AND (j.expires_at IS NULL OR j.expires_at >= c.now)  -- else it would expire again
RETURNING *;

-- name: existing_idempotency_keys
-- Which of the [tenant_id, idempotency_key] pairs (:keys, a JSON array) are taken already.
SELECT tenant_id, idempotency_key FROM async_jobs
WHERE idempotency_key IS NOT NULL
  AND (tenant_id, idempotency_key) IN (
      SELECT k.value ->> 0, k.value ->> 1 FROM json_each(:keys) AS k
  );

-- name: count_waiting
-- Each tenant's jobs waiting to start (pending or queued) in a use case, for max_pending;
-- :pairs is a JSON array of [tenant_id, use_case]. Counted on the claim's indexes, inside
-- the inserting transaction (BEGIN IMMEDIATE): no other insert can come between the count
-- and the insert. (status = 'queued' is also written as part of the IN of async_jobs_active,
-- so that SQLite sees that the partial index applies.)
SELECT p.value ->> 0 AS tenant_id,
       p.value ->> 1 AS use_case,
       (SELECT count(*) FROM async_jobs AS a
        WHERE a.status = 'pending'
          AND a.use_case = p.value ->> 1 AND a.tenant_id = p.value ->> 0)
     + (SELECT count(*) FROM async_jobs AS a
        WHERE a.status IN ('queued', 'running') AND a.status = 'queued'
          AND a.use_case = p.value ->> 1 AND a.tenant_id = p.value ->> 0) AS waiting
FROM json_each(:pairs) AS p;

-- name: expire_jobs
-- Jobs that could not start before their expires_at end cancelled, reason expired; walks
-- async_jobs_expiring, oldest expiry first.
UPDATE async_jobs AS j
SET status = 'cancelled',
    reason = 'expired',
    finished_at = c.now,
    updated_at = c.now
FROM (SELECT round((julianday('now') - 2440587.5) * 86400000.0) / 1000.0 AS now) AS c
WHERE j.id IN (
        SELECT id FROM async_jobs
        WHERE expires_at < round((julianday('now') - 2440587.5) * 86400000.0) / 1000.0
          AND status IN ('pending', 'queued')
        ORDER BY expires_at
        LIMIT :limit)
  AND j.status IN ('pending', 'queued')
  AND j.expires_at < c.now
RETURNING *;

-- name: delete_finished
-- Retention: one bounded batch of one terminal state, oldest first, on async_jobs_finished.
DELETE FROM async_jobs
WHERE id IN (
        SELECT id FROM async_jobs
        WHERE status = :status
          AND finished_at < round((julianday('now') - 2440587.5) * 86400000.0) / 1000.0
                            - :older_than_seconds
        ORDER BY finished_at
        LIMIT :limit)
RETURNING id;

-- name: set_paused
INSERT INTO async_jobs_use_cases (name, paused, updated_at)
VALUES (:name, :paused, round((julianday('now') - 2440587.5) * 86400000.0) / 1000.0)
ON CONFLICT (name) DO UPDATE SET paused = excluded.paused, updated_at = excluded.updated_at
RETURNING name, paused, updated_at;

-- name: list_use_cases
-- Every use case that has jobs or a row of its own (ever paused), by name.
SELECT n.name, coalesce(u.paused, 0) AS paused, u.updated_at
FROM (SELECT DISTINCT use_case AS name FROM async_jobs
      UNION
      SELECT name FROM async_jobs_use_cases) AS n
LEFT JOIN async_jobs_use_cases AS u ON u.name = n.name
ORDER BY n.name;

-- name: try_lead
-- Take the role if nobody holds it or the holder's lease ran out; keep it if it is ours.
-- A row comes back only if the holder leads now. One statement under the write lock, so
-- at most one holder leads at a time.
INSERT INTO async_jobs_leaders AS l (role, holder, expires_at, since)
SELECT :role, :holder, c.now + :lease_seconds, c.now
FROM (SELECT round((julianday('now') - 2440587.5) * 86400000.0) / 1000.0 AS now) AS c
WHERE true
ON CONFLICT (role) DO UPDATE
SET holder = excluded.holder,
    expires_at = excluded.expires_at,
    since = CASE WHEN l.holder = excluded.holder THEN l.since ELSE excluded.since END
WHERE l.holder = excluded.holder OR l.expires_at < excluded.since
RETURNING holder;

-- name: resign
DELETE FROM async_jobs_leaders WHERE role = :role AND holder = :holder;

-- name: current_leader
SELECT holder, since, expires_at FROM async_jobs_leaders
WHERE role = :role
  AND expires_at >= round((julianday('now') - 2440587.5) * 86400000.0) / 1000.0;

-- name: last_periodic_tick
SELECT last_tick FROM async_jobs_periodic WHERE name = :name;

-- name: advance_periodic
-- Only forward: a row comes back only if the tick moved.
INSERT INTO async_jobs_periodic AS p (name, last_tick, updated_at)
VALUES (:name, :tick, round((julianday('now') - 2440587.5) * 86400000.0) / 1000.0)
ON CONFLICT (name) DO UPDATE
SET last_tick = excluded.last_tick, updated_at = excluded.updated_at
WHERE p.last_tick < excluded.last_tick
RETURNING name;

-- name: stats_counts
SELECT use_case, tenant_id, status, count(*) AS n
FROM async_jobs
WHERE :tenant_id IS NULL OR tenant_id = :tenant_id
GROUP BY use_case, tenant_id, status
ORDER BY use_case, tenant_id, status;

-- name: stats_recent
-- The jobs that finished (terminal, on async_jobs_finished) or started (the others: on
-- async_jobs_active, and the pending ones waiting for a retry) after :since. A terminal job
-- that started after :since also finished after it, so the parts hold every job either
-- window needs, and no part reads the whole table.
SELECT status, run_at, deadline_at, started_at, finished_at
FROM async_jobs
WHERE status IN ('succeeded', 'failed', 'cancelled')
  AND finished_at > :since
  AND (:tenant_id IS NULL OR tenant_id = :tenant_id)
UNION ALL
SELECT status, run_at, deadline_at, started_at, finished_at
FROM async_jobs
WHERE status IN ('queued', 'running')
  AND started_at > :since
  AND (:tenant_id IS NULL OR tenant_id = :tenant_id)
UNION ALL
SELECT status, run_at, deadline_at, started_at, finished_at
FROM async_jobs
WHERE status = 'pending'
  AND started_at > :since
  AND (:tenant_id IS NULL OR tenant_id = :tenant_id);

-- name: stats_waiting
-- Pending jobs past their deadline, and the run_at of the longest-waiting due one.
SELECT count(*) FILTER (WHERE deadline_at < :now) AS overdue,
       min(run_at) FILTER (WHERE run_at <= :now) AS oldest_due_run_at
FROM async_jobs
WHERE status = 'pending' AND (:tenant_id IS NULL OR tenant_id = :tenant_id);

-- name: job_gauges
-- The store gauges: per (state, use case) of the work to do, at most :cap index entries
-- walked (async_jobs_claimable, async_jobs_active); the use cases are read from the same
-- partial indexes.
WITH groups(state, use_case) AS (
    SELECT DISTINCT 'pending', use_case FROM async_jobs WHERE status = 'pending'
    UNION ALL
    SELECT DISTINCT status, use_case FROM async_jobs WHERE status IN ('queued', 'running')
)
SELECT g.state, g.use_case,
       (SELECT count(*) FROM (SELECT 1 FROM async_jobs j
                              WHERE j.status = g.state AND j.use_case = g.use_case
                              LIMIT :cap)) AS n,
       (SELECT min(s.run_at) FROM (SELECT j.run_at FROM async_jobs j
                                   WHERE j.status = g.state AND j.use_case = g.use_case
                                   LIMIT :cap) AS s
        WHERE g.state = 'pending' AND s.run_at <= :now) AS oldest_due_run_at
FROM groups g;

-- name: create_webhook_deliveries
-- The outbox sweep (see the PostgreSQL query of the same name): a delivery for every ended
-- job with a webhook_url that has none for its latest ending, on async_jobs_webhook_outbox,
-- only as far back as :within_seconds when given. Ids are random (version 4) UUID text.
INSERT INTO async_jobs_webhook_deliveries
    (id, job_id, job_finished_at, tenant_id, url, event, max_attempts, next_attempt_at,
     created_at, updated_at)
SELECT lower(hex(randomblob(4)) || '-' || hex(randomblob(2)) || '-4'
             || substr(hex(randomblob(2)), 2) || '-'
             || substr('89ab', 1 + (abs(random()) % 4), 1) || substr(hex(randomblob(2)), 2)
             || '-' || hex(randomblob(6))),
       j.id, j.finished_at, j.tenant_id, j.webhook_url, j.status, :max_attempts,
       c.now, c.now, c.now
FROM async_jobs AS j,
     (SELECT round((julianday('now') - 2440587.5) * 86400000.0) / 1000.0 AS now) AS c
WHERE j.webhook_url IS NOT NULL
  AND j.status IN ('succeeded', 'failed', 'cancelled')
  AND j.finished_at IS NOT NULL
  AND (:within_seconds IS NULL OR j.finished_at >= c.now - :within_seconds)
  AND NOT EXISTS (SELECT 1 FROM async_jobs_webhook_deliveries AS x
                  WHERE x.job_id = j.id AND x.job_finished_at = j.finished_at)
ORDER BY j.finished_at
LIMIT :limit
ON CONFLICT (job_id, job_finished_at) DO NOTHING
RETURNING id;

-- name: lease_webhook_deliveries
-- Up to :limit due deliveries, each leased for its next attempt (see the PostgreSQL query);
-- the write transaction (BEGIN IMMEDIATE) keeps every other leaser out meanwhile.
UPDATE async_jobs_webhook_deliveries AS d
SET attempts = CASE WHEN d.attempts >= d.max_attempts THEN d.attempts ELSE d.attempts + 1 END,
    status = CASE WHEN d.attempts >= d.max_attempts THEN 'failed' ELSE 'pending' END,
    lease_token = CASE WHEN d.attempts >= d.max_attempts THEN NULL
        ELSE lower(hex(randomblob(4)) || '-' || hex(randomblob(2)) || '-4'
                   || substr(hex(randomblob(2)), 2) || '-'
                   || substr('89ab', 1 + (abs(random()) % 4), 1)
                   || substr(hex(randomblob(2)), 2) || '-' || hex(randomblob(6))) END,
    next_attempt_at = c.now + :lease_seconds,
    updated_at = c.now
FROM (SELECT round((julianday('now') - 2440587.5) * 86400000.0) / 1000.0 AS now) AS c
WHERE d.id IN (
        SELECT id FROM async_jobs_webhook_deliveries
        WHERE status = 'pending'
          AND next_attempt_at <= round((julianday('now') - 2440587.5) * 86400000.0) / 1000.0
        ORDER BY next_attempt_at
        LIMIT :limit)
  AND d.status = 'pending'
  AND d.next_attempt_at <= c.now
RETURNING *;

-- name: record_webhook_attempt
-- Fenced by the attempt number and lease token (see the PostgreSQL query).
UPDATE async_jobs_webhook_deliveries AS d
SET status = CASE WHEN :result = 'delivered' THEN 'delivered'
                  WHEN :result = 'failed' OR d.attempts >= d.max_attempts THEN 'failed'
                  ELSE 'pending' END,
    next_attempt_at = CASE WHEN :result = 'retry' AND d.attempts < d.max_attempts
                           THEN c.now + :delay ELSE d.next_attempt_at END,
    lease_token = NULL,
    attempt_log = json_insert(
        CASE WHEN json_array_length(d.attempt_log) >= 50 THEN json_remove(d.attempt_log, '$[0]')
             ELSE d.attempt_log END,
        '$[#]', json(:record)),
    updated_at = c.now
FROM (SELECT round((julianday('now') - 2440587.5) * 86400000.0) / 1000.0 AS now) AS c
WHERE d.id = :id
  AND d.attempts = :attempt
  AND d.lease_token = :lease_token
  AND d.status = 'pending'
RETURNING id;

-- name: get_webhook_deliveries
SELECT * FROM async_jobs_webhook_deliveries
WHERE job_id = :job_id
ORDER BY job_finished_at, created_at;

-- name: delete_lapsed_processes
DELETE FROM async_jobs_processes
WHERE expires_at < round((julianday('now') - 2440587.5) * 86400000.0) / 1000.0;

-- name: register_process
INSERT INTO async_jobs_processes AS p
    (id, kind, host, pid, version, concurrency, use_cases, started_at, heartbeat_at,
     expires_at)
SELECT :id, :kind, :host, :pid, :version, :concurrency, :use_cases, c.now, c.now,
       c.now + :ttl_seconds
FROM (SELECT round((julianday('now') - 2440587.5) * 86400000.0) / 1000.0 AS now) AS c
WHERE true
ON CONFLICT (id) DO UPDATE
SET heartbeat_at = excluded.heartbeat_at, expires_at = excluded.expires_at;

-- name: beat_process
UPDATE async_jobs_processes
SET jobs_held = :jobs_held,
    heartbeat_at = c.now,
    expires_at = c.now + :ttl_seconds
FROM (SELECT round((julianday('now') - 2440587.5) * 86400000.0) / 1000.0 AS now) AS c
WHERE id = :id
RETURNING id;

-- name: remove_process
DELETE FROM async_jobs_processes WHERE id = :id;

-- name: list_processes
SELECT id, kind, host, pid, version, concurrency, use_cases, jobs_held, started_at,
       heartbeat_at, expires_at
FROM async_jobs_processes
WHERE expires_at >= round((julianday('now') - 2440587.5) * 86400000.0) / 1000.0
ORDER BY kind, id;

-- name: count_jobs
-- How many jobs match list_jobs' filters, counting no further than :cap (the dashboard
-- shows "10,000+" rather than walk every row).
SELECT count(*) AS n FROM (
    SELECT 1 FROM async_jobs
    WHERE (:tenant_id IS NULL OR tenant_id = :tenant_id)
      -- use: job_filters
    LIMIT :cap
);

-- name: scan_jobs
-- The bounded walk of JobStore.scan_jobs: the keys of the first :wanted jobs that match
-- list_jobs' filters among at most :budget read newest first after the cursor (hit 1), or,
-- when fewer match, the key of the :budget-th job read (hit 0), if it read that many. It
-- reads a tenant's jobs on async_jobs_tenant_created (the second arm), else every job on
-- async_jobs_created; :created_before comes in the cursor and :created_after is -inf when
-- unset, so both bound the index range. The filters are checked on the rows read, never
-- inside walked, where they would make its LIMIT count matches instead of rows read.
-- walked is expanded where it is used (NOT MATERIALIZED): its second use, which walks it
-- again, only runs when fewer than :wanted match.
WITH walked AS NOT MATERIALIZED (
    SELECT * FROM (SELECT created_at, id, status, use_case, type, priority FROM async_jobs
                   WHERE :tenant_id IS NULL AND created_at > :created_after
                     AND (created_at, id) < (:after_created_at, :after_id)
                   ORDER BY created_at DESC, id DESC LIMIT :budget)
    UNION ALL
    SELECT * FROM (SELECT created_at, id, status, use_case, type, priority FROM async_jobs
                   WHERE tenant_id = :tenant_id AND created_at > :created_after
                     AND (created_at, id) < (:after_created_at, :after_id)
                   ORDER BY created_at DESC, id DESC LIMIT :budget)
)
SELECT * FROM (
    SELECT created_at, id, 1 AS hit FROM walked
    WHERE true
      -- use: job_filters
    LIMIT :wanted)
UNION ALL
SELECT * FROM (SELECT created_at, id, 0 FROM walked LIMIT 1 OFFSET :budget - 1)
LIMIT :wanted;

-- name: get_jobs
-- Jobs by id (:ids, a JSON array), in no order (scan_jobs' page: its caller sorts them).
SELECT * FROM async_jobs WHERE id IN (SELECT value FROM json_each(:ids));

-- name: get_job_by_key
-- A tenant's job by its idempotency key, on its unique index.
SELECT * FROM async_jobs WHERE tenant_id = :tenant_id AND idempotency_key = :key;

-- name: pause_periodic
INSERT INTO async_jobs_periodic_paused (name, paused_at)
VALUES (:name, round((julianday('now') - 2440587.5) * 86400000.0) / 1000.0)
ON CONFLICT (name) DO NOTHING;

-- name: resume_periodic
DELETE FROM async_jobs_periodic_paused WHERE name = :name;

-- name: paused_periodic
SELECT name FROM async_jobs_periodic_paused ORDER BY name;

-- name: active_counts
-- Per use case with waiting or running jobs (or ever paused): pending, queued and running
-- jobs, each count stopping at :cap, on the partial indexes async_jobs_claimable and
-- async_jobs_active.
WITH names AS (
    SELECT DISTINCT use_case AS name FROM async_jobs WHERE status = 'pending'
    UNION SELECT DISTINCT use_case FROM async_jobs WHERE status IN ('queued', 'running')
    UNION SELECT name FROM async_jobs_use_cases
)
SELECT n.name, coalesce(u.paused, 0) AS paused,
    (SELECT count(*) FROM (SELECT 1 FROM async_jobs j
        WHERE j.status = 'pending' AND j.use_case = n.name
          AND (:tenant_id IS NULL OR j.tenant_id = :tenant_id) LIMIT :cap)) AS pending,
    (SELECT count(*) FROM (SELECT 1 FROM async_jobs j
        WHERE j.status = 'queued' AND j.use_case = n.name
          AND (:tenant_id IS NULL OR j.tenant_id = :tenant_id) LIMIT :cap)) AS queued,
    (SELECT count(*) FROM (SELECT 1 FROM async_jobs j
        WHERE j.status = 'running' AND j.use_case = n.name
          AND (:tenant_id IS NULL OR j.tenant_id = :tenant_id) LIMIT :cap)) AS running
FROM names n LEFT JOIN async_jobs_use_cases u ON u.name = n.name
ORDER BY n.name;

-- name: count_queued
-- Queued jobs (dispatched to a broker, not yet claimed) per use case of :use_cases, each
-- count stopping at :cap: the broker dispatchers' window, on the partial index
-- async_jobs_active (queued and running jobs by use case).
SELECT u.value AS use_case,
    (SELECT count(*) FROM (SELECT 1 FROM async_jobs j
        WHERE j.status = 'queued' AND j.use_case = u.value LIMIT :cap)) AS n
FROM json_each(:use_cases) AS u;

-- name: rollup_source
-- The jobs that ended in [:lo, :hi) (async_jobs_finished, one range per terminal state), as
-- the rollup counts them (domain/rollup.py aggregates them: SQLite may lack log10).
SELECT use_case, tenant_id, status, run_at, deadline_at, started_at, finished_at
FROM async_jobs
WHERE status IN ('succeeded', 'failed', 'cancelled')
  AND finished_at >= :lo AND finished_at < :hi;

-- name: rollup_span
SELECT rolled_from, rolled_until FROM async_jobs_rollup_span;

-- name: rollup_span_write
-- The span after a run (domain/rollup.py, extend_rolled), in the run's transaction.
INSERT INTO async_jobs_rollup_span (id, rolled_from, rolled_until)
VALUES (1, :rolled_from, :rolled_until)
ON CONFLICT (id) DO UPDATE
SET rolled_from = excluded.rolled_from, rolled_until = excluded.rolled_until;

-- name: rollup_clear
DELETE FROM async_jobs_rollup WHERE minute >= :lo AND minute < :hi;

-- name: rollup_write
INSERT INTO async_jobs_rollup
    (tenant_id, minute, use_case, succeeded, failed, cancelled, deadline_misses, run_hist,
     wait_hist)
VALUES (:tenant_id, :minute, :use_case, :succeeded, :failed, :cancelled, :deadline_misses,
        :run_hist, :wait_hist);

-- name: delete_rollup
DELETE FROM async_jobs_rollup WHERE minute < :before RETURNING 1;

-- name: read_rollup
-- One tenant's rows ('' : every tenant) whose minute began after :since, on the primary key.
SELECT minute, use_case, succeeded, failed, cancelled, deadline_misses, run_hist, wait_hist
FROM async_jobs_rollup
WHERE tenant_id = coalesce(:tenant_id, '') AND minute >= :since
ORDER BY minute, use_case;

-- name: oldest_due
-- Per use case with pending jobs, the run_at of its oldest due one (of :tenant_id, or any),
-- a read of the pending rows of async_jobs_claimable (which holds run_at).
SELECT use_case, min(run_at) AS run_at
FROM async_jobs
WHERE status = 'pending' AND run_at <= :now
  AND (:tenant_id IS NULL OR tenant_id = :tenant_id)
GROUP BY use_case;
