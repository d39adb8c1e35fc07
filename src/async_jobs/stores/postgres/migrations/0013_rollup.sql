-- The dashboard's per-minute rollup of ended jobs (docs/dashboard.md): the Overview's cards
-- and charts read a few hundred of these rows instead of every job that ended in the last
-- hour. The leading process rewrites the last minutes every few seconds
-- (roll_up_finished) and deletes rows older than two days (delete_rollup). tenant_id ''
-- rows sum every tenant's. Histograms are jsonb objects, bucket -> jobs (domain/rollup.py).
-- Nothing on the jobs table changes: the rollup reads async_jobs_finished (0009).
CREATE TABLE async_jobs_rollup (
    tenant_id       text NOT NULL,
    minute          timestamptz NOT NULL,
    use_case        text NOT NULL,
    succeeded       integer NOT NULL DEFAULT 0,
    failed          integer NOT NULL DEFAULT 0,
    cancelled       integer NOT NULL DEFAULT 0,
    deadline_misses integer NOT NULL DEFAULT 0,
    run_hist        jsonb NOT NULL DEFAULT '{}',
    wait_hist       jsonb NOT NULL DEFAULT '{}',
    PRIMARY KEY (tenant_id, minute, use_case)
);

-- The rewrite of a range of minutes (every tenant) and the deletion of old rows.
CREATE INDEX async_jobs_rollup_minute ON async_jobs_rollup (minute);
