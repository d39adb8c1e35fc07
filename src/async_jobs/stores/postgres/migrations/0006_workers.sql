-- The registry of live processes (workers and schedulers): one row each, written at start,
-- renewed with the heartbeats the process already makes, deleted on a clean stop. A row whose
-- expires_at passed belongs to a dead process: it is not listed, and the next registration
-- deletes it. A small table (one row per process): read whole.

CREATE TABLE async_jobs_processes (
    id           text PRIMARY KEY,
    kind         text NOT NULL CHECK (kind IN ('worker', 'scheduler')),
    host         text NOT NULL,
    pid          integer NOT NULL,
    version      text NOT NULL,
    concurrency  integer NOT NULL DEFAULT 0,
    use_cases    text[] NOT NULL DEFAULT '{}',
    jobs_held    integer NOT NULL DEFAULT 0,
    started_at   timestamptz NOT NULL DEFAULT now(),
    heartbeat_at timestamptz NOT NULL DEFAULT now(),
    expires_at   timestamptz NOT NULL
);

-- Periodic jobs paused from the dashboard: their ticks pass without being enqueued.
CREATE TABLE async_jobs_periodic_paused (
    name      text PRIMARY KEY,
    paused_at timestamptz NOT NULL DEFAULT now()
);

-- The dashboard's chart and last-hour counts read the ended jobs of a window through
-- async_jobs_finished (status, finished_at), made by 0009: its functions below name the
-- terminal states, so each state is one range of that index.

-- The dashboard's two reads of many rows, as functions planned with jit = off: their cost
-- estimates (a skip scan's 1000 rows, the ended jobs of an hour) otherwise start JIT
-- compilation, which costs seconds for work of a few milliseconds (as for the claim, 0003).
CREATE FUNCTION async_jobs_active_counts(p_tenant text, p_cap integer)
RETURNS TABLE (name text, paused boolean, pending bigint, queued bigint, running bigint)
LANGUAGE sql STABLE
SET jit = off
AS $fn$
WITH names AS (
    SELECT async_jobs_pending_use_cases() AS name
    UNION SELECT DISTINCT use_case FROM async_jobs WHERE status IN ('queued', 'running')
    UNION SELECT name FROM async_jobs_use_cases
)
SELECT n.name, coalesce(u.paused, false) AS paused,
    (SELECT count(*) FROM (SELECT 1 FROM async_jobs j
        WHERE j.status = 'pending' AND j.use_case = n.name
          AND (p_tenant IS NULL OR j.tenant_id = p_tenant) LIMIT p_cap) AS c) AS pending,
    (SELECT count(*) FROM (SELECT 1 FROM async_jobs j
        WHERE j.status = 'queued' AND j.use_case = n.name
          AND (p_tenant IS NULL OR j.tenant_id = p_tenant) LIMIT p_cap) AS c) AS queued,
    (SELECT count(*) FROM (SELECT 1 FROM async_jobs j
        WHERE j.status = 'running' AND j.use_case = n.name
          AND (p_tenant IS NULL OR j.tenant_id = p_tenant) LIMIT p_cap) AS c) AS running
FROM names n LEFT JOIN async_jobs_use_cases u ON u.name = n.name
ORDER BY n.name
$fn$;

CREATE FUNCTION async_jobs_finished_per_bucket(
    p_tenant text, p_window double precision, p_bucket double precision
)
RETURNS TABLE (use_case text, status text, bucket integer, n bigint)
LANGUAGE sql STABLE
SET jit = off
AS $fn$
SELECT use_case, status::text AS status,
       floor(extract(epoch FROM now() - finished_at) / p_bucket)::int AS bucket, count(*) AS n
FROM async_jobs
WHERE (p_tenant IS NULL OR tenant_id = p_tenant)
  AND status IN ('succeeded', 'failed', 'cancelled')
  AND finished_at > now() - make_interval(secs => p_window)
GROUP BY 1, 2, 3
$fn$;
