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

-- name: migration_record
INSERT INTO async_jobs_migrations (name) VALUES ($1);

-- name: insert_job
-- One job, one statement, no explicit transaction: the fast path of single enqueue.
INSERT INTO async_jobs AS j (
    id, tenant_id, use_case, type, payload, priority, max_attempts, run_at,
    delay_tolerance_seconds, deadline_at, timeout_seconds, idempotency_key, webhook_url
)
SELECT $1, $2, $3, $4, $5::text::jsonb, $6::text::async_jobs_priority, $7, t.run_at,
       $10, t.run_at + make_interval(secs => $10), $11, $12, $13
FROM (SELECT COALESCE($9::timestamptz, now() + make_interval(secs => $8::float8)) AS run_at) AS t
ON CONFLICT (tenant_id, idempotency_key) WHERE idempotency_key IS NOT NULL DO NOTHING
RETURNING j.id, j.run_at, j.deadline_at, j.created_at;

-- name: insert_jobs
-- One statement for one job or a batch. A repeated idempotency key inserts nothing; the
-- caller then reads the existing job. run_at is absolute when given, else now() + delay.
INSERT INTO async_jobs AS j (
    id, tenant_id, use_case, type, payload, priority, max_attempts, run_at,
    delay_tolerance_seconds, deadline_at, timeout_seconds, idempotency_key, webhook_url
)
SELECT
    u.id, u.tenant_id, u.use_case, u.type, u.payload::jsonb, u.priority::async_jobs_priority,
    u.max_attempts, t.run_at, u.tolerance, t.run_at + make_interval(secs => u.tolerance),
    u.timeout_seconds, u.idempotency_key, u.webhook_url
FROM unnest(
    $1::uuid[], $2::text[], $3::text[], $4::text[], $5::text[], $6::text[], $7::int[],
    $8::float8[], $9::timestamptz[], $10::float8[], $11::float8[], $12::text[], $13::text[]
) AS u(id, tenant_id, use_case, type, payload, priority, max_attempts,
       delay, run_at, tolerance, timeout_seconds, idempotency_key, webhook_url)
CROSS JOIN LATERAL (
    SELECT COALESCE(u.run_at, now() + make_interval(secs => u.delay)) AS run_at
) AS t
ON CONFLICT (tenant_id, idempotency_key) WHERE idempotency_key IS NOT NULL DO NOTHING
RETURNING j.id, j.run_at, j.deadline_at, j.created_at;

-- name: get_jobs_by_idempotency_key
SELECT * FROM async_jobs WHERE tenant_id = $1 AND idempotency_key = ANY($2::text[]);

-- name: get_job
SELECT * FROM async_jobs WHERE id = $1 AND ($2::text IS NULL OR tenant_id = $2);

-- name: list_jobs
-- Newest first; the cursor is the (created_at, id) of the last row of the previous page.
SELECT * FROM async_jobs
WHERE ($1::text IS NULL OR tenant_id = $1)
  AND ($2::async_jobs_state IS NULL OR status = $2)
  AND ($3::text IS NULL OR use_case = $3)
  AND ($4::text IS NULL OR type = $4)
  AND ($5::timestamptz IS NULL OR created_at > $5)
  AND ($6::timestamptz IS NULL OR created_at < $6)
  AND ($7::timestamptz IS NULL OR (created_at, id) < ($7, $8::uuid))
ORDER BY created_at DESC, id DESC
LIMIT $9;

-- name: claim_jobs
-- Due pending jobs in priority, then deadline order, walked on async_jobs_claimable; rows
-- another claimer holds are skipped, so claimers never wait for each other. The statement is
-- the function async_jobs_claim (migration 0001), which pins that plan.
SELECT * FROM async_jobs_claim($1, $2::text[], $3::text[], $4, $5);

-- name: record_outcomes
-- Fenced: a row changes only while it is running under the attempt and lease token of the
-- outcome (a lease token exists only while running: async_jobs_lease_only_when_running).
-- A released attempt is handed back without counting. `id = ANY($1)` lets the planner find
-- the rows by primary key instead of walking every running row per outcome.
UPDATE async_jobs AS j
SET status = (CASE u.kind
        WHEN 'succeeded' THEN 'succeeded'
        WHEN 'failed' THEN 'failed'
        WHEN 'cancelled' THEN 'cancelled'
        ELSE 'pending' END)::async_jobs_state,
    attempts = j.attempts - (u.kind = 'released')::int,
    result = u.result::jsonb,
    error = COALESCE(u.error::jsonb, j.error),
    run_at = CASE WHEN u.kind = 'retry' THEN now() + make_interval(secs => u.delay)
                  ELSE j.run_at END,
    deadline_at = CASE WHEN u.kind = 'retry'
                       THEN now() + make_interval(secs => u.delay + j.delay_tolerance_seconds)
                       ELSE j.deadline_at END,
    started_at = CASE WHEN u.kind = 'released' THEN NULL ELSE j.started_at END,
    finished_at = CASE WHEN u.kind IN ('succeeded', 'failed', 'cancelled') THEN now() END,
    lease_token = NULL,
    lease_expires_at = NULL,
    updated_at = now()
FROM unnest($1::uuid[], $2::int[], $3::uuid[], $4::text[], $5::text[], $6::text[],
            $7::float8[]) AS u(id, attempt, token, kind, result, error, delay)
WHERE j.id = ANY($1::uuid[])
  AND j.id = u.id
  AND j.attempts = u.attempt
  AND j.lease_token = u.token
RETURNING j.id;

-- name: extend_leases
UPDATE async_jobs AS j
SET lease_expires_at = now() + make_interval(secs => $4),
    updated_at = now()
FROM unnest($1::uuid[], $2::int[], $3::uuid[]) AS u(id, attempt, token)
WHERE j.id = ANY($1::uuid[])
  AND j.id = u.id
  AND j.attempts = u.attempt
  AND j.lease_token = u.token
RETURNING j.id;
