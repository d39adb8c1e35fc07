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

-- Jobs by the time they ended, for the dashboard's chart and per-use-case counts of the last
-- hour (and retention's sweeps): a range of this index instead of a walk of the table.
CREATE INDEX async_jobs_finished_at ON async_jobs (finished_at) WHERE finished_at IS NOT NULL;
