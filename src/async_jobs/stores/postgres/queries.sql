-- Every SQL statement the PostgreSQL store runs at run time. Values are always parameters.

-- name: ping
SELECT 1;

-- name: rollback
-- Undoes a transaction a pooled connection was released in.
ROLLBACK;

-- name: migrations_lock
-- Serialises concurrent `migrate` runs for the length of the transaction.
SELECT pg_advisory_xact_lock(hashtext('async_jobs_migrate'));

-- name: migrations_table
CREATE TABLE IF NOT EXISTS async_jobs_migrations (
    name       text PRIMARY KEY,
    applied_at timestamptz NOT NULL DEFAULT now()
);

-- name: migrations_applied
SELECT name FROM async_jobs_migrations ORDER BY name;

-- name: migrations_table_exists
SELECT to_regclass('async_jobs_migrations') IS NOT NULL;

-- name: migration_record
INSERT INTO async_jobs_migrations (name) VALUES ($1);

-- name: insert_job
-- One job without an idempotency key ($12 NULL), one statement, no explicit transaction: the
-- fast path of single enqueue. Such a job cannot conflict, so there is no ON CONFLICT, whose
-- arbiter costs a single insert about 30 us here. A job with a key goes by insert_jobs.
-- $17: created_at, the id's time (also the first updated_at).
INSERT INTO async_jobs AS j (
    id, tenant_id, use_case, type, payload, priority, max_attempts, run_at,
    delay_tolerance_seconds, deadline_at, timeout_seconds, idempotency_key, webhook_url,
    backoff, expires_at, trace_context, delayed, created_at, updated_at
)
VALUES ($1, $2, $3, $4, $5::text::jsonb, $6::text::async_jobs_priority, $7,
        COALESCE($9::timestamptz, now() + make_interval(secs => $8::float8)), $10,
        COALESCE($9::timestamptz, now() + make_interval(secs => $8::float8))
            + make_interval(secs => $10),
        $11, $12::text, $13, $14::text::jsonb, $15, $16::text,
        COALESCE($9::timestamptz, now() + make_interval(secs => $8::float8)) > now(),
        $17::timestamptz, $17::timestamptz)
RETURNING j.id, j.run_at, j.deadline_at, j.created_at;

-- part: insert_rows
-- The rows of one statement, one job or a batch; run_at is absolute when given, else
-- now() + delay.
-- Ids and payloads come as arrays ($1, $2). Every other column comes either as an array of
-- one value per job ($3-$15) or, when all jobs of the batch share one value (the usual
-- case: one type, one tenant, no key), as that single value ($16-$28) with its array NULL,
-- which unnest reads as NULL in every row. One of the two is always NULL, so COALESCE
-- picks the one that was sent. $29: the trace context of the whole statement (one enqueue
-- call, one context). $30: each job's created_at, its id's time (also its first updated_at).
INSERT INTO async_jobs AS j (
    id, tenant_id, use_case, type, payload, priority, max_attempts, run_at,
    delay_tolerance_seconds, deadline_at, timeout_seconds, idempotency_key, webhook_url,
    backoff, expires_at, trace_context, delayed, created_at, updated_at
)
SELECT
    u.id, COALESCE(u.tenant_id, $16), COALESCE(u.use_case, $17), COALESCE(u.type, $18),
    u.payload::jsonb, COALESCE(u.priority, $19)::async_jobs_priority,
    COALESCE(u.max_attempts, $20), t.run_at, t.tolerance,
    t.run_at + make_interval(secs => t.tolerance), COALESCE(u.timeout_seconds, $24),
    COALESCE(u.idempotency_key, $25), COALESCE(u.webhook_url, $26),
    COALESCE(u.backoff, $27)::jsonb, COALESCE(u.expires_at, $28), $29::text,
    t.run_at > now(), u.created_at, u.created_at
FROM unnest(
    $1::uuid[], $2::text[], $3::text[], $4::text[], $5::text[], $6::text[], $7::int[],
    $8::float8[], $9::timestamptz[], $10::float8[], $11::float8[], $12::text[], $13::text[],
    $14::text[], $15::timestamptz[], $30::timestamptz[]
) AS u(id, payload, tenant_id, use_case, type, priority, max_attempts,
       delay, run_at, tolerance, timeout_seconds, idempotency_key, webhook_url, backoff,
       expires_at, created_at)
CROSS JOIN LATERAL (
    SELECT COALESCE(u.run_at, $22::timestamptz,
                    now() + make_interval(secs => COALESCE(u.delay, $21::float8))) AS run_at,
           COALESCE(u.tolerance, $23::float8) AS tolerance
) AS t

-- name: insert_jobs
-- insert_rows, each inserted job's row returned, in the order of the jobs. A repeated
-- idempotency key inserts nothing; the caller then reads the existing job.
-- use: insert_rows
ON CONFLICT (tenant_id, idempotency_key) WHERE idempotency_key IS NOT NULL DO NOTHING
RETURNING j.id, j.run_at, j.deadline_at, j.created_at, now() AS now;

-- name: insert_jobs_alike
-- insert_rows for jobs that have no idempotency key and share their delay, run_at and
-- tolerance: every job is inserted, and all get the same run_at and deadline (now() is the
-- transaction's start; created_at is each job's own, sent). One row comes back instead of
-- one per job: reading a thousand rows cost the client about 3 us per job, a third of its
-- work in a batch. The caller checks that each time's least and greatest agree. Without a
-- key no row can conflict, so there is no ON CONFLICT: its arbiter has PostgreSQL insert
-- each row speculatively and confirm it (a second WAL record), which cost a statement of 50
-- jobs about a tenth of its time.
WITH inserted AS (
    -- use: insert_rows
    RETURNING j.run_at, j.deadline_at
)
SELECT count(*)::int AS n, min(run_at) AS run_at, max(run_at) AS last_run_at,
       min(deadline_at) AS deadline_at, max(deadline_at) AS last_deadline_at, now() AS now
FROM inserted;

-- name: get_inserted_times
-- The times of jobs an insert_jobs_alike statement wrote, should they not agree.
SELECT id, run_at, deadline_at, created_at FROM async_jobs WHERE id = ANY($1::uuid[]);

-- name: get_jobs_by_idempotency_key
SELECT * FROM async_jobs WHERE tenant_id = $1 AND idempotency_key = ANY($2::text[]);

-- name: get_jobs_by_idempotency_key_as_text
-- The same, on a caller's own connection, whose codecs are not ours: every jsonb, uuid and
-- enum column comes as text, under its own name.
SELECT id::text AS id, tenant_id, use_case, type, payload::text AS payload,
       priority::text AS priority, status::text AS status, attempts, max_attempts, run_at,
       delay_tolerance_seconds, deadline_at, timeout_seconds, idempotency_key, webhook_url,
       progress_percent, progress_message, result::text AS result, error::text AS error,
       worker_id, lease_token::text AS lease_token, lease_expires_at, cancel_requested,
       created_at, updated_at, started_at, finished_at, reason, history::text AS history,
       backoff::text AS backoff, expires_at
FROM async_jobs WHERE tenant_id = $1 AND idempotency_key = ANY($2::text[]);

-- name: announce_finished
-- The same announcement for jobs that ended another way (cancelled while waiting, reaped,
-- expired); $1 is a comma-separated list of ids.
SELECT pg_notify('async_jobs_finished', $1);

-- name: get_job
SELECT * FROM async_jobs WHERE id = $1 AND ($2::text IS NULL OR tenant_id = $2);

-- part: job_filters
-- The filters of list_jobs, count_jobs and scan_jobs ($1 tenant, $2 state, $3 use case, $4
-- type, $5 and $6 created after and before): each one NULL leaves out. A job's created_at
-- is its id's time (0018), so the two times also bound the id, with a minute to spare for
-- rows written before 0018, whose created_at came from the database's clock. The id's bound
-- is taken from the time held within the ids' range (from the Unix epoch, which
-- async_jobs_id_floor needs, to year 10000; asyncpg sends the least and the largest datetime
-- as -infinity and infinity); created_at is compared with the time itself.
WHERE ($1::text IS NULL OR tenant_id = $1)
  AND ($2::async_jobs_state IS NULL OR status = $2)
  AND ($3::text IS NULL OR use_case = $3)
  AND ($4::text IS NULL OR type = $4)
  AND ($5::timestamptz IS NULL
       OR (created_at > $5 AND id >= async_jobs_id_floor(
               least(greatest($5 - interval '1 minute', 'epoch'), '10000-01-01Z'))))
  AND ($6::timestamptz IS NULL
       OR (created_at < $6 AND id < async_jobs_id_floor(
               least(greatest($6 + interval '1 minute', 'epoch'), '10000-01-01Z'))))

-- name: list_jobs
-- Newest first: in the order of the ids, which is that of created_at (0018). The cursor is
-- the (created_at, id) of the last row of the previous page; its id is the bound.
SELECT * FROM async_jobs
-- use: job_filters
  AND ($7::timestamptz IS NULL OR id < $8::uuid)
  AND ($10::async_jobs_priority IS NULL OR priority = $10)
ORDER BY id DESC
LIMIT $9;

-- name: claim_jobs
-- Due pending jobs within every limit, in priority, tenant-turn, deadline order, started
-- (or, $13, dispatched); the statement is the function async_jobs_claim (claim.sql, which
-- the migrations load), which pins its plan.
SELECT * FROM async_jobs_claim($1, $2::text[], $3::text[], $4, $5, $6, $7::text[], $8::int[],
                               $9::text[], $10::text[], $11::int[], $12::float8[], $13);

-- name: dispatch_jobs
-- The claim of claim_jobs for a broker ($13 dispatch: true): due pending jobs within every
-- limit become queued under a fresh dispatch id; only what a ticket needs comes back (the
-- jobs' payloads and histories are not sent to a dispatcher that does not read them), in
-- the claim's order (priority, deadline, due time).
SELECT c.id, c.attempts, c.dispatch_id
FROM async_jobs_claim($1, $2::text[], $3::text[], $4, $5, $6, $7::text[], $8::int[],
                      $9::text[], $10::text[], $11::int[], $12::float8[], true) AS c
ORDER BY c.priority, c.deadline_at, c.run_at;

-- name: claim_dispatched
-- A worker starts the jobs its broker messages name ($1 ids, $2 attempts, $3 dispatch ids):
-- only a job still queued under that dispatch, for that attempt, and not expired.
UPDATE async_jobs AS j
SET status = 'running',
    attempts = j.attempts + 1,
    lease_token = gen_random_uuid(),
    lease_expires_at = now() + make_interval(secs => $5),
    worker_id = $4,
    started_at = now(),
    finished_at = NULL,
    progress_percent = NULL,
    progress_message = NULL,
    dispatch_id = NULL,
    dispatch_expires_at = NULL,
    updated_at = now()
FROM unnest($1::uuid[], $2::int[], $3::uuid[]) AS t(id, attempt, dispatch_id)
WHERE j.id = t.id
  AND j.status = 'queued'
  AND j.dispatch_id = t.dispatch_id
  AND j.attempts + 1 = t.attempt
  AND (j.expires_at IS NULL OR j.expires_at > now())
RETURNING j.*;

-- name: requeue_lapsed_dispatches
-- Dispatches nobody claimed by their deadline go back to pending (no attempt counted),
-- oldest first, at most $1.
UPDATE async_jobs AS j
SET status = 'pending', dispatch_id = NULL, dispatch_expires_at = NULL, updated_at = now()
WHERE j.id = ANY(ARRAY(
        SELECT id FROM async_jobs
        WHERE status = 'queued' AND dispatch_expires_at < now()
        ORDER BY dispatch_expires_at
        LIMIT $1
        FOR UPDATE SKIP LOCKED))
  AND j.status = 'queued'
  AND j.dispatch_expires_at < now()
RETURNING j.id;

-- name: requeue_dispatches
-- Named dispatches ($1 ids, $2 dispatch ids: sends that failed) go back to pending, if the
-- jobs are still queued under them.
UPDATE async_jobs AS j
SET status = 'pending', dispatch_id = NULL, dispatch_expires_at = NULL, updated_at = now()
FROM unnest($1::uuid[], $2::uuid[]) AS t(id, dispatch_id)
WHERE j.id = t.id AND j.status = 'queued' AND j.dispatch_id = t.dispatch_id
RETURNING j.id;

-- name: lock_pending_quota
-- Enqueues into one tenant's use case with a max_pending take turns until commit.
SELECT pg_advisory_xact_lock(hashtextextended('async_jobs.pending:' || $1 || '/' || $2, 0));

-- name: count_waiting
-- A tenant's jobs waiting to start in a use case, and which of the given idempotency keys
-- it holds already (those are repeats, not new jobs).
SELECT (SELECT count(*) FROM async_jobs  -- async_jobs_ready
        WHERE status = 'pending' AND NOT delayed AND use_case = $2 AND tenant_id = $1)
     + (SELECT count(*) FROM async_jobs  -- async_jobs_marked
        WHERE status = 'pending' AND delayed AND use_case = $2 AND tenant_id = $1)
     + (SELECT count(*) FROM async_jobs
        WHERE status = 'queued' AND use_case = $2 AND tenant_id = $1) AS waiting,
       ARRAY(SELECT idempotency_key FROM async_jobs
             WHERE tenant_id = $1 AND idempotency_key = ANY($3::text[])) AS existing;

-- part: lease_fence
-- The fence of a worker's writes to the jobs it holds (record_outcomes, extend_leases,
-- record_progress; u: their unnested arrays, $1 the ids): a row (j) changes only while it
-- holds the attempt and lease token of u. A lease token exists only while the job runs
-- (async_jobs_lease_only_when_running). `id = ANY($1)` lets the planner find the rows by
-- primary key instead of walking every running row.
WHERE j.id = ANY($1::uuid[])
  AND j.id = u.id
  AND j.attempts = u.attempt
  AND j.lease_token = u.token

-- part: attempt_entry
-- The first fields of the history entry of an attempt that ends (record_outcomes,
-- reap_expired_leases): which attempt, whose, and when it started and ended; the outcome and
-- error follow.
'attempt', j.attempts,
'worker_id', j.worker_id,
'started_at', extract(epoch FROM j.started_at),
'finished_at', extract(epoch FROM now()),

-- name: record_outcomes
-- The outcomes of a worker's attempts, fenced by their leases: async_jobs_record_outcomes
-- (outcomes.sql, 0020). $8: history entries kept; $9: error message length kept.
SELECT id FROM async_jobs_record_outcomes(
    $1::uuid[], $2::int[], $3::uuid[], $4::text[], $5::text[], $6::text[], $7::float8[],
    $8::int, $9::int) AS id;

-- name: extend_leases
-- Every lease a worker holds renewed, and which of its jobs are to be cancelled:
-- async_jobs_extend_leases (outcomes.sql, 0020).
SELECT id, cancel_requested FROM async_jobs_extend_leases($1::uuid[], $2::int[], $3::uuid[], $4);

-- name: record_progress
-- Fenced like an outcome: only the attempt that holds the lease may report progress.
UPDATE async_jobs AS j
SET progress_percent = u.percent,
    progress_message = u.message,
    updated_at = now()
FROM unnest($1::uuid[], $2::int[], $3::uuid[], $4::real[], $5::text[])
    AS u(id, attempt, token, percent, message)
-- use: lease_fence
RETURNING j.id;

-- name: reap_expired_leases
-- Running jobs whose lease expired by the database clock: the attempt counts and ends
-- `worker_lost`; the job is due again at once, or failed when its attempts are spent, or
-- cancelled when that was asked. The rows are chosen and locked, and the guard checked
-- again, in this one statement: a job completed meanwhile is no longer running with an
-- expired lease and is not touched. SKIP LOCKED lets several reapers share the work. The
-- history keeps the latest $2 attempts. The rules are domain/transitions.py's.
UPDATE async_jobs AS j
SET status = (CASE WHEN j.cancel_requested THEN 'cancelled'
                   WHEN j.attempts >= j.max_attempts THEN 'failed'
                   ELSE 'pending' END)::async_jobs_state,
    error = jsonb_build_object(
        'type', 'WorkerLost',
        'message', format('the lease of attempt %s expired: worker %s stopped renewing it',
                          j.attempts, coalesce(j.worker_id, '?')),
        'traceback', NULL),
    reason = CASE WHEN j.cancel_requested THEN 'cancelled' ELSE 'worker_lost' END,
    history = (CASE WHEN jsonb_array_length(j.history) >= $2::int THEN j.history - 0
                    ELSE j.history END)
              || jsonb_build_array(jsonb_build_object(
                     -- use: attempt_entry
                     'outcome', 'worker_lost',
                     'error_type', 'WorkerLost',
                     'error_message', 'the lease expired')),
    run_at = CASE WHEN j.cancel_requested OR j.attempts >= j.max_attempts THEN j.run_at
                  ELSE now() END,
    deadline_at = CASE WHEN j.cancel_requested OR j.attempts >= j.max_attempts
                       THEN j.deadline_at
                       ELSE now() + make_interval(secs => j.delay_tolerance_seconds) END,
    finished_at = CASE WHEN j.cancel_requested OR j.attempts >= j.max_attempts
                       THEN now() END,
    lease_token = NULL,
    lease_expires_at = NULL,
    updated_at = now()
WHERE j.id = ANY(ARRAY(
        SELECT id FROM async_jobs
        WHERE status = 'running' AND lease_expires_at < now()
        ORDER BY lease_expires_at
        LIMIT $1
        FOR UPDATE SKIP LOCKED))
  AND j.status = 'running'
  AND j.lease_expires_at < now()
RETURNING j.*;

-- name: cancel_job
-- Pending or queued: cancelled at once. Running: flagged; the trigger
-- async_jobs_cancel_requested (migration 0002) wakes the worker that holds it. Terminal
-- jobs are not matched; the caller reads them as they stand.
UPDATE async_jobs AS j
SET status = CASE WHEN j.status = 'running' THEN j.status
                  ELSE 'cancelled'::async_jobs_state END,
    cancel_requested = true,
    reason = 'cancelled',
    finished_at = CASE WHEN j.status = 'running' THEN j.finished_at ELSE now() END,
    updated_at = now()
WHERE j.id = $1
  AND ($2::text IS NULL OR j.tenant_id = $2)
  AND j.status IN ('pending', 'queued', 'running')
  AND NOT (j.status = 'running' AND j.cancel_requested)  -- asked already: nothing to do
RETURNING j.*;

-- name: retry_job
-- A failed or cancelled job not past its expires_at goes back to pending, due now, with at
-- least one attempt left; its history and last error stay.
UPDATE async_jobs AS j
SET status = 'pending',
    run_at = now(),
    deadline_at = now() + make_interval(secs => j.delay_tolerance_seconds),
    max_attempts = greatest(j.max_attempts, j.attempts + 1),
    cancel_requested = false,
    reason = 'manual_retry',
    result = NULL,
    progress_percent = NULL,
    progress_message = NULL,
    worker_id = NULL,
    started_at = NULL,
    finished_at = NULL,
    updated_at = now()
WHERE j.id = $1
  AND ($2::text IS NULL OR j.tenant_id = $2)
  AND j.status IN ('failed', 'cancelled')
  AND (j.expires_at IS NULL OR j.expires_at >= now())  -- else it would expire again
RETURNING j.*;

-- name: expire_jobs
-- Jobs that could not start before their expires_at end cancelled, reason expired.
UPDATE async_jobs AS j
SET status = 'cancelled',
    reason = 'expired',
    finished_at = now(),
    updated_at = now()
WHERE j.id = ANY(ARRAY(
        SELECT id FROM async_jobs
        WHERE expires_at < now() AND status IN ('pending', 'queued')
        ORDER BY expires_at
        LIMIT $1
        FOR UPDATE SKIP LOCKED))
  AND j.status IN ('pending', 'queued')
  AND j.expires_at < now()
RETURNING j.*;

-- name: delete_finished
-- Retention: one bounded batch of one terminal state, guarded again after the lock.
DELETE FROM async_jobs
WHERE id = ANY(ARRAY(
        SELECT id FROM async_jobs
        WHERE status = $1::async_jobs_state
          AND finished_at < now() - make_interval(secs => $2)
        LIMIT $3
        FOR UPDATE SKIP LOCKED))
  AND status = $1::async_jobs_state
  AND finished_at < now() - make_interval(secs => $2);

-- name: set_paused
INSERT INTO async_jobs_use_cases (name, paused, updated_at) VALUES ($1, $2, now())
ON CONFLICT (name) DO UPDATE SET paused = EXCLUDED.paused, updated_at = now()
RETURNING name, paused, updated_at;

-- name: list_use_cases
SELECT n.name, coalesce(u.paused, false) AS paused, u.updated_at
FROM (SELECT DISTINCT use_case AS name FROM async_jobs
      UNION
      SELECT name FROM async_jobs_use_cases) AS n
LEFT JOIN async_jobs_use_cases u ON u.name = n.name
ORDER BY n.name;

-- name: try_lead
-- Take the role if nobody holds it or the holder's lease ran out; keep it if it is ours.
-- A row comes back only if the holder leads now.
INSERT INTO async_jobs_leaders AS l (role, holder, expires_at, since)
VALUES ($1, $2, now() + make_interval(secs => $3), now())
ON CONFLICT (role) DO UPDATE
SET holder = EXCLUDED.holder,
    expires_at = EXCLUDED.expires_at,
    since = CASE WHEN l.holder = EXCLUDED.holder THEN l.since ELSE now() END
WHERE l.holder = EXCLUDED.holder OR l.expires_at < now()
RETURNING l.holder;

-- name: resign
DELETE FROM async_jobs_leaders WHERE role = $1 AND holder = $2;

-- name: current_leader
SELECT holder, since, expires_at FROM async_jobs_leaders WHERE role = $1 AND expires_at >= now();

-- name: last_periodic_tick
SELECT last_tick FROM async_jobs_periodic WHERE name = $1;

-- name: advance_periodic
INSERT INTO async_jobs_periodic AS p (name, last_tick) VALUES ($1, $2)
ON CONFLICT (name) DO UPDATE SET last_tick = EXCLUDED.last_tick, updated_at = now()
WHERE p.last_tick < EXCLUDED.last_tick
RETURNING p.name;

-- name: stats_counts
SELECT use_case, tenant_id, status::text AS status, count(*) AS n
FROM async_jobs
WHERE $1::text IS NULL OR tenant_id = $1
GROUP BY use_case, tenant_id, status
ORDER BY use_case, tenant_id, status;

-- name: stats_recent
-- Throughput, run time, queue wait and deadline misses of the last hour. The jobs that
-- finished in it are read from async_jobs_finished, the ones that started in it and have not
-- ended from async_jobs_active and async_jobs_retrying (pending: waiting for a retry); a
-- terminal job that started in the hour also finished in it. No part reads the history.
WITH recent AS (
    SELECT status, run_at, deadline_at, started_at, finished_at
    FROM async_jobs
    WHERE status IN ('succeeded', 'failed', 'cancelled')
      AND finished_at > now() - interval '1 hour'
      AND ($1::text IS NULL OR tenant_id = $1)
    UNION ALL
    SELECT status, run_at, deadline_at, started_at, finished_at
    FROM async_jobs
    WHERE status IN ('queued', 'running')
      AND started_at > now() - interval '1 hour'
      AND ($1::text IS NULL OR tenant_id = $1)
    UNION ALL
    SELECT status, run_at, deadline_at, started_at, finished_at
    FROM async_jobs
    WHERE status = 'pending'
      AND started_at IS NOT NULL
      AND started_at > now() - interval '1 hour'
      AND ($1::text IS NULL OR tenant_id = $1)
)
SELECT
    now() AS generated_at,
    count(*) FILTER (WHERE status = 'succeeded' AND finished_at > now() - interval '1 minute')
        AS succeeded_minute,
    count(*) FILTER (WHERE status = 'failed' AND finished_at > now() - interval '1 minute')
        AS failed_minute,
    count(*) FILTER (WHERE status = 'cancelled' AND finished_at > now() - interval '1 minute')
        AS cancelled_minute,
    count(*) FILTER (WHERE status = 'succeeded' AND finished_at > now() - interval '1 hour')
        AS succeeded_hour,
    count(*) FILTER (WHERE status = 'failed' AND finished_at > now() - interval '1 hour')
        AS failed_hour,
    count(*) FILTER (WHERE status = 'cancelled' AND finished_at > now() - interval '1 hour')
        AS cancelled_hour,
    percentile_cont(ARRAY[0.5, 0.95, 0.99]::float8[])
        WITHIN GROUP (ORDER BY extract(epoch FROM finished_at - started_at))
        FILTER (WHERE status IN ('succeeded', 'failed', 'cancelled')
                AND finished_at > now() - interval '1 hour' AND started_at IS NOT NULL)
        AS run_seconds,
    percentile_cont(ARRAY[0.5, 0.95, 0.99]::float8[])
        WITHIN GROUP (ORDER BY greatest(extract(epoch FROM started_at - run_at), 0))
        FILTER (WHERE started_at > now() - interval '1 hour') AS wait_seconds,
    count(*) FILTER (WHERE started_at > now() - interval '1 hour' AND started_at > deadline_at)
        AS deadline_misses
FROM recent;

-- name: stats_waiting
SELECT count(*) FILTER (WHERE deadline_at < now()) AS overdue,
       extract(epoch FROM now() - min(run_at) FILTER (WHERE run_at <= now()))::float8
           AS oldest_due_seconds
FROM async_jobs
WHERE status = 'pending' AND ($1::text IS NULL OR tenant_id = $1);

-- name: job_gauges
-- The store gauges, never a count of the table: use cases found by skip scans, then per
-- (state, use case) a walk of at most $1 index entries (pending: async_jobs_due, which holds
-- run_at, so an index-only scan; queued and running: async_jobs_active).
WITH RECURSIVE active_use_cases(use_case) AS (
    (SELECT use_case FROM async_jobs WHERE status IN ('queued', 'running')
     ORDER BY use_case LIMIT 1)
    UNION ALL
    SELECT (SELECT a.use_case FROM async_jobs a
            WHERE a.status IN ('queued', 'running') AND a.use_case > w.use_case
            ORDER BY a.use_case LIMIT 1)
    FROM active_use_cases w WHERE w.use_case IS NOT NULL
)
SELECT 'pending' AS state, u AS use_case, c.n,
       extract(epoch FROM now() - c.oldest)::float8 AS oldest_due_seconds
FROM async_jobs_pending_use_cases() AS u
CROSS JOIN LATERAL (
    SELECT count(*) AS n, min(s.run_at) FILTER (WHERE s.run_at <= now()) AS oldest
    FROM (SELECT j.run_at FROM async_jobs j
          WHERE j.status = 'pending' AND j.use_case = u LIMIT $1) AS s
) AS c
UNION ALL
-- Each state as a constant, so that the planner matches the partial index's predicate.
SELECT 'queued', a.use_case, c.n, NULL::float8
FROM active_use_cases a
CROSS JOIN LATERAL (
    SELECT count(*) AS n
    FROM (SELECT 1 FROM async_jobs j
          WHERE j.status = 'queued' AND j.use_case = a.use_case LIMIT $1) AS s
) AS c
WHERE a.use_case IS NOT NULL AND c.n > 0
UNION ALL
SELECT 'running', a.use_case, c.n, NULL::float8
FROM active_use_cases a
CROSS JOIN LATERAL (
    SELECT count(*) AS n
    FROM (SELECT 1 FROM async_jobs j
          WHERE j.status = 'running' AND j.use_case = a.use_case LIMIT $1) AS s
) AS c
WHERE a.use_case IS NOT NULL AND c.n > 0;

-- name: create_webhook_deliveries
-- The outbox sweep: a delivery for every ended job with a webhook_url that has none for its
-- latest ending (a job retried by hand and ended again has a new finished_at). Walks
-- async_jobs_webhook_outbox, only as far back as $3 seconds when given (NULL: all of it);
-- the unique (job_id, job_finished_at) makes two sweeps at once harmless.
INSERT INTO async_jobs_webhook_deliveries AS d
    (id, job_id, job_finished_at, tenant_id, url, event, max_attempts, next_attempt_at)
SELECT gen_random_uuid(), j.id, j.finished_at, j.tenant_id, j.webhook_url, j.status::text,
       $2, now()
FROM async_jobs j
WHERE j.webhook_url IS NOT NULL
  AND j.status IN ('succeeded', 'failed', 'cancelled')
  AND j.finished_at IS NOT NULL
  AND ($3::float8 IS NULL OR j.finished_at >= now() - make_interval(secs => $3::float8))
  AND NOT EXISTS (SELECT 1 FROM async_jobs_webhook_deliveries x
                  WHERE x.job_id = j.id AND x.job_finished_at = j.finished_at)
ORDER BY j.finished_at
LIMIT $1
ON CONFLICT (job_id, job_finished_at) DO NOTHING
RETURNING d.id;

-- name: lease_webhook_deliveries
-- Up to $1 due deliveries: each gets attempts + 1, a fresh lease token, and its
-- next_attempt_at pushed $2 seconds on (so no other sender takes it while this one sends;
-- a sender that dies gives it back when that time comes). One whose attempts are spent (its
-- last sender died) ends failed instead and is not handed out. SKIP LOCKED lets several
-- senders share the work; the guard is checked again after the lock.
UPDATE async_jobs_webhook_deliveries AS d
SET attempts = CASE WHEN d.attempts >= d.max_attempts THEN d.attempts ELSE d.attempts + 1 END,
    status = CASE WHEN d.attempts >= d.max_attempts THEN 'failed' ELSE 'pending' END,
    lease_token = CASE WHEN d.attempts >= d.max_attempts THEN NULL ELSE gen_random_uuid() END,
    next_attempt_at = now() + make_interval(secs => $2::float8),
    updated_at = now()
WHERE d.id = ANY(ARRAY(
        SELECT id FROM async_jobs_webhook_deliveries
        WHERE status = 'pending' AND next_attempt_at <= now()
        ORDER BY next_attempt_at
        LIMIT $1
        FOR UPDATE SKIP LOCKED))
  AND d.status = 'pending'
  AND d.next_attempt_at <= now()
RETURNING d.*;

-- name: record_webhook_attempt
-- Fenced: only the attempt ($2) under the lease token ($3) that leased it may record it.
-- $4 is delivered, retry or failed; a retry with no attempt left fails. The latest 50
-- attempts are kept.
UPDATE async_jobs_webhook_deliveries AS d
SET status = CASE WHEN $4::text = 'delivered' THEN 'delivered'
                  WHEN $4::text = 'failed' OR d.attempts >= d.max_attempts THEN 'failed'
                  ELSE 'pending' END,
    next_attempt_at = CASE WHEN $4::text = 'retry' AND d.attempts < d.max_attempts
                           THEN now() + make_interval(secs => $6::float8)
                           ELSE d.next_attempt_at END,
    lease_token = NULL,
    attempt_log = (CASE WHEN jsonb_array_length(d.attempt_log) >= 50 THEN d.attempt_log - 0
                        ELSE d.attempt_log END) || jsonb_build_array($5::jsonb),
    updated_at = now()
WHERE d.id = $1
  AND d.attempts = $2
  AND d.lease_token = $3
  AND d.status = 'pending'
RETURNING d.id;

-- name: get_webhook_deliveries
SELECT * FROM async_jobs_webhook_deliveries
WHERE job_id = $1
ORDER BY job_finished_at, created_at;

-- name: delete_lapsed_processes
DELETE FROM async_jobs_processes WHERE expires_at < now();

-- name: register_process
INSERT INTO async_jobs_processes AS p
    (id, kind, host, pid, version, concurrency, use_cases, expires_at)
VALUES ($1, $2, $3, $4, $5, $6, $7, now() + make_interval(secs => $8))
ON CONFLICT (id) DO UPDATE
SET heartbeat_at = now(), expires_at = EXCLUDED.expires_at;

-- name: beat_process
UPDATE async_jobs_processes
SET jobs_held = $2, heartbeat_at = now(), expires_at = now() + make_interval(secs => $3)
WHERE id = $1
RETURNING id;

-- name: remove_process
DELETE FROM async_jobs_processes WHERE id = $1;

-- name: list_processes
SELECT id, kind, host, pid, version, concurrency, use_cases, jobs_held, started_at,
       heartbeat_at, expires_at
FROM async_jobs_processes
WHERE expires_at >= now()
ORDER BY kind, id;

-- name: custom_plans
-- For the rest of the transaction (count_jobs', list_jobs'): plan each statement for its own
-- parameters, so that the filters left out ($n IS NULL) drop out of the plan. Once a prepared
-- statement has run five times PostgreSQL may plan it once for any parameters: for
-- count_jobs, after a few costly counts (a filter on priority alone), a sequential scan of
-- the whole table for every count, 0.1 ms -> 170 ms a count at a million jobs; for
-- list_jobs, made generic on a small table, a sequential scan and a sort of all of it once
-- the table had grown (82 ms a page beside 220,000 jobs, against 1.1 ms).
SET LOCAL plan_cache_mode = force_custom_plan; SET LOCAL jit = off;

-- name: count_jobs
-- How many jobs match list_jobs' filters, counting no further than $7: the dashboard shows
-- "10,000+" rather than walk every row. The filters use list_jobs' indexes (and, with a use
-- case and an active state, the claim's: async_jobs_active, or for pending jobs
-- async_jobs_ready and async_jobs_marked, the unmarked and the marked rows, counted apart so
-- that each is one range of a tenant's; for another state the second part is planned away).
-- Run after custom_plans, in the same transaction: each $n is then a constant.
SELECT count(*) AS n FROM (
    (SELECT 1 FROM async_jobs
     -- use: job_filters
       AND ($8::async_jobs_priority IS NULL OR priority = $8)
       AND ($2::async_jobs_state IS DISTINCT FROM 'pending' OR NOT delayed)
     LIMIT $7)
    UNION ALL
    (SELECT 1 FROM async_jobs
     -- use: job_filters
       AND ($8::async_jobs_priority IS NULL OR priority = $8)
       AND $2::async_jobs_state = 'pending' AND delayed
     LIMIT $7)
    LIMIT $7
) AS capped;

-- name: scan_walk_only
-- For the rest of the transaction (scan_jobs'): plan each statement for its own parameters,
-- so that the filters left out ($n IS NULL) drop out of the plan, and never sort, scan the
-- table or bitmap-scan an index for it, so that the walk is an ordered index scan that stops
-- after its LIMIT whatever the statistics say (and, with the penalty of a node disabled in
-- its estimate, no JIT compilation).
SET LOCAL plan_cache_mode = force_custom_plan; SET LOCAL enable_sort = off;
SET LOCAL enable_bitmapscan = off; SET LOCAL enable_seqscan = off; SET LOCAL jit = off;

-- name: scan_jobs
-- A walk newest first of at most $9 jobs after the cursor ($7, $8) that returns the keys of
-- the first $10 matching list_jobs' filters (hit true), or, when fewer match, the key of the
-- $9-th job read (hit false: the walk spent its budget there), if it read that many.
-- walked reads one index, backward: a tenant's jobs on async_jobs_tenant_ids (its BETWEEN and
-- the ORDER BY led by tenant_id leave no other index that gives the order), the failed and
-- cancelled jobs ($12) on async_jobs_failed_ids, else the primary key; the other filters are
-- checked on the rows it read, never in its WHERE, where they would make the LIMIT count
-- matches instead of rows read. Its rows are read newest first (the ids' order, 0018).
-- The created_at bounds are those of job_filters. Run after scan_walk_only, in the same
-- transaction.
WITH walked AS (
    SELECT created_at, id, tenant_id, status, use_case, type, priority FROM async_jobs
    WHERE ($1::text IS NULL OR tenant_id BETWEEN $1 AND $1)
      AND (NOT $12::boolean OR status IN ('failed', 'cancelled'))
      AND ($5::timestamptz IS NULL
           OR (created_at > $5 AND id >= async_jobs_id_floor(
                   least(greatest($5 - interval '1 minute', 'epoch'), '10000-01-01Z'))))
      AND ($6::timestamptz IS NULL
           OR (created_at < $6 AND id < async_jobs_id_floor(
                   least(greatest($6 + interval '1 minute', 'epoch'), '10000-01-01Z'))))
      AND ($7::timestamptz IS NULL OR id < $8::uuid)
    ORDER BY CASE WHEN $1::text IS NULL THEN NULL ELSE tenant_id END DESC, id DESC
    LIMIT $9
)
(SELECT created_at, id, true AS hit FROM walked
 -- use: job_filters
   AND ($11::async_jobs_priority IS NULL OR priority = $11)
 LIMIT $10)
UNION ALL
(SELECT created_at, id, false FROM walked OFFSET $9 - 1 LIMIT 1)
LIMIT $10;

-- name: get_jobs
-- Jobs by id, in no order (scan_jobs' page: its caller sorts them; under scan_walk_only an
-- ORDER BY here could walk the primary key rather than sort a few rows).
SELECT * FROM async_jobs WHERE id = ANY($1::uuid[]);

-- name: get_job_by_key
-- A tenant's job by its idempotency key, on async_jobs_idempotency_key.
SELECT * FROM async_jobs WHERE tenant_id = $1 AND idempotency_key = $2;

-- name: pause_periodic
INSERT INTO async_jobs_periodic_paused (name) VALUES ($1) ON CONFLICT (name) DO NOTHING;

-- name: resume_periodic
DELETE FROM async_jobs_periodic_paused WHERE name = $1;

-- name: paused_periodic
SELECT name FROM async_jobs_periodic_paused ORDER BY name;

-- name: active_counts
-- Per use case with waiting or running jobs (or ever paused): pending, queued and running
-- jobs, each count stopping at $2 (the function async_jobs_active_counts, migration 0006:
-- use cases from skip scans of the partial indexes, each count on its state's index).
SELECT * FROM async_jobs_active_counts($1, $2);

-- name: count_queued
-- Queued jobs (dispatched to a broker, not yet claimed) per use case of $1, each count
-- stopping at $2: the broker dispatchers' window. Each count reads a partial index that
-- holds queued jobs only (async_jobs_dispatched) or queued and running ones
-- (async_jobs_active, by use case), as the planner prefers: never the whole table.
SELECT u.use_case, (
    SELECT count(*) FROM (
        SELECT 1 FROM async_jobs j
        WHERE j.status = 'queued' AND j.use_case = u.use_case
        LIMIT $2
    ) AS capped
) AS n
FROM unnest($1::text[]) AS u(use_case);

-- The statements of `async-jobs bench` (async_jobs.bench): the benchmark shapes and reads
-- the table of its own database around the measurements. Its measured jobs are in tenant
-- and use case 'default' (literals, so that the planner sees them); seeded rows are in
-- tenants 'bench-t<n>'.

-- part: bench_seed_id
-- A job id as the app makes it for a job created at t.c (UUID version 7: the millisecond,
-- then random digits with the version and variant in place), so that the seeded rows list
-- in time order among the measured ones (0018).
(lpad(to_hex(floor(extract(epoch FROM t.c) * 1000)::bigint), 12, '0') || '7'
 || substr(r.m, 1, 3) || '8' || substr(r.m, 4, 15))::uuid

-- name: bench_seed_history
-- Finished jobs created over the last week, each finished a few seconds after it was
-- created: rows $1 to $2 of $4, over $3 tenants.
INSERT INTO async_jobs (
    id, tenant_id, use_case, type, payload, priority, status, attempts, max_attempts,
    run_at, delay_tolerance_seconds, deadline_at, result, worker_id,
    created_at, updated_at, started_at, finished_at)
SELECT
-- use: bench_seed_id
       ,
       'bench-t' || (i % $3),
       CASE WHEN i % 5 = 0 THEN 'default' ELSE 'bench-other-' || (i % 5) END,
       'bench_history', '{}'::jsonb, 'medium', 'succeeded', 1, 3,
       c, 60, c + interval '60 seconds', '{"ok": true}'::jsonb, 'bench-seed',
       c, c + interval '2 seconds', c + interval '1 second', c + interval '2 seconds'
FROM generate_series($1::bigint, $2::bigint) AS i,
     LATERAL (SELECT now() - interval '7 days' * (i::float8 / $4)) AS t(c),
     LATERAL (SELECT md5(i::text || random()::text)) AS r(m);

-- name: bench_seed_backlog
-- Pending jobs due in one to two days, marked delayed as an enqueue with a delay marks them:
-- pending rows the claim must not walk (rows $1 to $2 of $4, over $3 tenants).
INSERT INTO async_jobs (
    id, tenant_id, use_case, type, payload, priority, status, attempts, max_attempts,
    run_at, delay_tolerance_seconds, deadline_at, created_at, updated_at, delayed)
SELECT
-- use: bench_seed_id
       ,
       'bench-t' || (i % $3),
       CASE WHEN i % 5 = 0 THEN 'default' ELSE 'bench-other-' || (i % 5) END,
       'bench_backlog', '{}'::jsonb, 'medium', 'pending', 0, 3,
       d.due, 60, d.due + interval '60 seconds', t.c, t.c, true
FROM generate_series($1::bigint, $2::bigint) AS i,
     LATERAL (SELECT now() + interval '1 day' + interval '1 day' * (i::float8 / $4)) AS d(due),
     LATERAL (SELECT now()) AS t(c),
     LATERAL (SELECT md5(i::text || random()::text)) AS r(m);

-- name: bench_unfinished
-- The measured jobs not ended yet: polled during a drain, so it must cost the database
-- little beside the worker it measures. Each count names the predicate of one of the
-- claim's partial indexes (async_jobs_ready, async_jobs_active) and is read there; one
-- count of the three states matched neither, and on a table of ten million rows the
-- planner read every row of the tenant through async_jobs_tenant_created (14-60 ms a poll,
-- about a third of a core during a drain, against 3-4 ms on an empty table). The measured
-- jobs are due when written and never retried (no-ops), so never marked delayed.
SELECT (SELECT count(*) FROM async_jobs
        WHERE status = 'pending' AND NOT delayed AND use_case = 'default'
          AND tenant_id = 'default')
     + (SELECT count(*) FROM async_jobs
        WHERE status IN ('queued', 'running') AND use_case = 'default' AND tenant_id = 'default');

-- name: bench_measured_counts
SELECT status::text, count(*) FROM async_jobs
WHERE tenant_id = 'default' AND type IN ('noop', 'noop_timed') GROUP BY 1;

-- name: bench_status_counts
SELECT status::text, count(*) FROM async_jobs GROUP BY 1;

-- name: bench_clear_measured
DELETE FROM async_jobs WHERE tenant_id = 'default' AND type IN ('noop', 'noop_timed');

-- name: bench_latencies
-- Seconds from the enqueue (the payload's t0) to the handler's start (its result).
SELECT (result->>'started')::float8 - (payload->>'t0')::float8
FROM async_jobs WHERE tenant_id = 'default' AND type = 'noop_timed' AND status = 'succeeded';

-- name: bench_truncate
-- Every job, and its webhook deliveries.
TRUNCATE async_jobs CASCADE;

-- name: bench_analyze
ANALYZE async_jobs;

-- name: bench_vacuum
VACUUM (ANALYZE) async_jobs;

-- name: bench_shape
-- The shape a seeded table holds (the comment `async-jobs bench` wrote on it).
SELECT obj_description('async_jobs'::regclass, 'pg_class');

-- name: bench_server_version
SHOW server_version;

-- name: bench_other_connections
SELECT count(*) FROM pg_stat_activity
WHERE datname = current_database() AND pid <> pg_backend_pid();

-- name: bench_sizes
-- The table and each of its indexes, in bytes.
SELECT c.relname AS name, pg_relation_size(c.oid) AS bytes, c.relkind::text AS kind
FROM pg_class c
WHERE c.oid = 'async_jobs'::regclass
   OR c.oid IN (SELECT indexrelid FROM pg_index WHERE indrelid = 'async_jobs'::regclass)
ORDER BY c.relkind DESC, c.relname;

-- name: bench_tuple_stats
SELECT n_live_tup, n_dead_tup, n_tup_upd, n_tup_hot_upd, n_tup_del,
       pg_total_relation_size('async_jobs') AS total_bytes,
       autovacuum_count, autoanalyze_count
FROM pg_stat_user_tables WHERE relid = 'async_jobs'::regclass;

-- name: roll_up_plan
-- For the rest of the transaction (roll_up_finished's): no JIT compilation, which a
-- statement over many rows would otherwise start and which costs more than the work (as for
-- the claim, 0003); and no merge joins. The every-tenant rows' tenant is an expression
-- (coalesce over GROUPING SETS), so a merge join of the counts and the histograms matched
-- on the minute and the use case only and filtered the rest: beside 10,000 tenants, 779,090
-- pairs for 7,913 rows. Hash joins match on all three columns: 0.31 -> 0.21 s for the 15
-- minutes a new leader rolls up first there, the same (within 4%) beside 20 tenants.
SET LOCAL jit = off; SET LOCAL enable_mergejoin = off;

-- name: roll_up_finished
-- The rollup (migration 0013) of the minutes from the one $1 seconds ago to the one $2
-- seconds ago, recomputed from the jobs that ended in them (async_jobs_finished, one range
-- per terminal state): per (minute, use case, tenant) and per (minute, use case) for every
-- tenant (''). Rows of the range whose jobs are gone are deleted, the others replaced
-- where they changed (a leader re-rolls minutes that are mostly done). Run after
-- roll_up_plan and rollup_span_lock, in the same transaction. Answers the rows written and
-- the span of time it covered: from the first minute to the end of the last one or now(),
-- whichever is earlier (rollup_span_write).
-- Histogram buckets as domain/rollup.py's bucket_of: 0 under 1 ms, then ten a decade.
WITH bounds AS (
    SELECT date_trunc('minute', now() - make_interval(secs => $1)) AS lo,
           date_trunc('minute', now() - make_interval(secs => $2)) + interval '1 minute' AS hi
), ended AS (
    SELECT date_trunc('minute', j.finished_at) AS minute, j.use_case, j.tenant_id,
           j.status::text AS status,
           coalesce(j.started_at > j.deadline_at, false) AS missed,
           CASE WHEN j.started_at IS NULL THEN NULL
                WHEN extract(epoch FROM j.finished_at - j.started_at)::float8 < 0.001 THEN 0
                ELSE least(81, 1 + floor(10 * log(
                    extract(epoch FROM j.finished_at - j.started_at)::float8 / 0.001))::int)
           END AS run_b,
           CASE WHEN j.started_at IS NULL THEN NULL
                WHEN extract(epoch FROM j.started_at - j.run_at)::float8 < 0.001 THEN 0
                ELSE least(81, 1 + floor(10 * log(
                    extract(epoch FROM j.started_at - j.run_at)::float8 / 0.001))::int)
           END AS wait_b
    FROM async_jobs j, bounds b
    WHERE j.status IN ('succeeded', 'failed', 'cancelled')
      AND j.finished_at >= b.lo AND j.finished_at < b.hi
), counts AS (
    SELECT minute, use_case, coalesce(tenant_id, '') AS tenant_id,
           count(*) FILTER (WHERE status = 'succeeded') AS succeeded,
           count(*) FILTER (WHERE status = 'failed') AS failed,
           count(*) FILTER (WHERE status = 'cancelled') AS cancelled,
           count(*) FILTER (WHERE missed) AS missed
    FROM ended
    GROUP BY GROUPING SETS ((minute, use_case, tenant_id), (minute, use_case))
), runs AS (
    SELECT minute, use_case, tenant_id, jsonb_object_agg(b, n) AS hist
    FROM (SELECT minute, use_case, coalesce(tenant_id, '') AS tenant_id, run_b AS b,
                 count(*) AS n
          FROM ended WHERE run_b IS NOT NULL
          GROUP BY GROUPING SETS ((minute, use_case, tenant_id, run_b), (minute, use_case, run_b))
         ) AS per_bucket
    GROUP BY minute, use_case, tenant_id
), waits AS (
    SELECT minute, use_case, tenant_id, jsonb_object_agg(b, n) AS hist
    FROM (SELECT minute, use_case, coalesce(tenant_id, '') AS tenant_id, wait_b AS b,
                 count(*) AS n
          FROM ended WHERE wait_b IS NOT NULL
          GROUP BY GROUPING SETS ((minute, use_case, tenant_id, wait_b), (minute, use_case, wait_b))
         ) AS per_bucket
    GROUP BY minute, use_case, tenant_id
), fresh AS (
    SELECT c.tenant_id, c.minute, c.use_case, c.succeeded, c.failed, c.cancelled, c.missed,
           coalesce(r.hist, '{}') AS run_hist, coalesce(w.hist, '{}') AS wait_hist
    FROM counts c
    LEFT JOIN runs r USING (minute, use_case, tenant_id)
    LEFT JOIN waits w USING (minute, use_case, tenant_id)
), gone AS (
    DELETE FROM async_jobs_rollup o
    USING bounds b
    WHERE o.minute >= b.lo AND o.minute < b.hi
      AND NOT EXISTS (SELECT 1 FROM fresh f
                      WHERE f.tenant_id = o.tenant_id AND f.minute = o.minute
                        AND f.use_case = o.use_case)
), written AS (
    INSERT INTO async_jobs_rollup AS o
        (tenant_id, minute, use_case, succeeded, failed, cancelled, deadline_misses, run_hist,
         wait_hist)
    SELECT tenant_id, minute, use_case, succeeded, failed, cancelled, missed, run_hist,
           wait_hist
    FROM fresh
    ON CONFLICT (tenant_id, minute, use_case) DO UPDATE
    SET succeeded = EXCLUDED.succeeded, failed = EXCLUDED.failed,
        cancelled = EXCLUDED.cancelled, deadline_misses = EXCLUDED.deadline_misses,
        run_hist = EXCLUDED.run_hist, wait_hist = EXCLUDED.wait_hist
    WHERE (o.succeeded, o.failed, o.cancelled, o.deadline_misses, o.run_hist, o.wait_hist)
          IS DISTINCT FROM (EXCLUDED.succeeded, EXCLUDED.failed, EXCLUDED.cancelled,
                            EXCLUDED.deadline_misses, EXCLUDED.run_hist, EXCLUDED.wait_hist)
    RETURNING 1
)
SELECT (SELECT count(*) FROM written)::int AS written,
       extract(epoch FROM b.lo)::float8 AS rolled_from,
       extract(epoch FROM least(b.hi, now()))::float8 AS rolled_until
FROM bounds b;

-- name: rollup_span_lock
-- The span the rollup holds (migration 0021), locked for the rest of the run's transaction,
-- so that two processes rolling up at once extend it one after the other.
SELECT extract(epoch FROM rolled_from)::float8 AS rolled_from,
       extract(epoch FROM rolled_until)::float8 AS rolled_until
FROM async_jobs_rollup_span FOR UPDATE;

-- name: rollup_span_write
-- The span after a run (domain/rollup.py, extend_rolled), in the run's transaction.
INSERT INTO async_jobs_rollup_span (id, rolled_from, rolled_until)
VALUES (true, to_timestamp($1), to_timestamp($2))
ON CONFLICT (id) DO UPDATE
SET rolled_from = EXCLUDED.rolled_from, rolled_until = EXCLUDED.rolled_until;

-- name: rolled_up
-- How long ago the rollup's span begins and ends, by the database's clock.
SELECT extract(epoch FROM now() - rolled_from)::float8 AS begins_ago,
       extract(epoch FROM now() - rolled_until)::float8 AS ends_ago
FROM async_jobs_rollup_span;

-- name: delete_rollup
DELETE FROM async_jobs_rollup WHERE minute < now() - make_interval(secs => $1);

-- name: read_rollup
-- The rollup rows of one tenant ('' : every tenant) whose minute began in the last $2
-- seconds, on the primary key.
SELECT minute, use_case, succeeded, failed, cancelled, deadline_misses, run_hist, wait_hist,
       now() AS generated_at
FROM async_jobs_rollup
WHERE tenant_id = coalesce($1::text, '')
  AND minute >= now() - make_interval(secs => $2)
ORDER BY minute, use_case;

-- name: oldest_due
-- Per use case with pending jobs (skip scan), its oldest due one's wait (of tenant $1, or of
-- any): the first due entry of each part of async_jobs_due, the unmarked and the marked rows.
SELECT u AS use_case, extract(epoch FROM now() - o.run_at)::float8 AS seconds
FROM async_jobs_pending_use_cases() AS u
CROSS JOIN LATERAL (
    SELECT least(
        (SELECT j.run_at FROM async_jobs j
         WHERE j.status = 'pending' AND j.use_case = u AND NOT j.delayed AND j.run_at <= now()
           AND ($1::text IS NULL OR j.tenant_id = $1)
         ORDER BY j.run_at
         LIMIT 1),
        (SELECT j.run_at FROM async_jobs j
         WHERE j.status = 'pending' AND j.use_case = u AND j.delayed AND j.run_at <= now()
           AND ($1::text IS NULL OR j.tenant_id = $1)
         ORDER BY j.run_at
         LIMIT 1)) AS run_at
) AS o
WHERE o.run_at IS NOT NULL;

-- name: now
SELECT now();
