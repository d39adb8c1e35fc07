-- The registry of live processes (workers and schedulers). Mirrors the PostgreSQL migration
-- of the same name; times are REAL unix seconds, use_cases a JSON array.

CREATE TABLE async_jobs_processes (
    id           TEXT NOT NULL PRIMARY KEY,
    kind         TEXT NOT NULL CHECK (kind IN ('worker', 'scheduler')),
    host         TEXT NOT NULL,
    pid          INTEGER NOT NULL,
    version      TEXT NOT NULL,
    concurrency  INTEGER NOT NULL DEFAULT 0,
    use_cases    TEXT NOT NULL DEFAULT '[]',
    jobs_held    INTEGER NOT NULL DEFAULT 0,
    started_at   REAL NOT NULL,
    heartbeat_at REAL NOT NULL,
    expires_at   REAL NOT NULL
) STRICT;

-- Periodic jobs paused from the dashboard: their ticks pass without being enqueued.
CREATE TABLE async_jobs_periodic_paused (
    name      TEXT NOT NULL PRIMARY KEY,
    paused_at REAL NOT NULL
) STRICT;
