-- The dashboard's per-minute rollup of ended jobs. Mirrors the PostgreSQL migration of the
-- same name; minute is REAL unix seconds (a multiple of 60), histograms JSON objects.
CREATE TABLE async_jobs_rollup (
    tenant_id       TEXT NOT NULL,
    minute          REAL NOT NULL,
    use_case        TEXT NOT NULL,
    succeeded       INTEGER NOT NULL DEFAULT 0,
    failed          INTEGER NOT NULL DEFAULT 0,
    cancelled       INTEGER NOT NULL DEFAULT 0,
    deadline_misses INTEGER NOT NULL DEFAULT 0,
    run_hist        TEXT NOT NULL DEFAULT '{}',
    wait_hist       TEXT NOT NULL DEFAULT '{}',
    PRIMARY KEY (tenant_id, minute, use_case)
) STRICT;

CREATE INDEX async_jobs_rollup_minute ON async_jobs_rollup (minute);
