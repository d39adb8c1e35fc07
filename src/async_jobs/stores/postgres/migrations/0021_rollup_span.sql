-- The span of time whose ended jobs the rollup (0013) holds, one row, written in the same
-- transaction as the rollup's rows (domain/rollup.py, extend_rolled). A process that starts
-- leading goes on from it: it rolls up the minutes since the span ends and catches up from
-- where it begins, instead of rolling up again the latest fifteen minutes and the hour
-- before (beside 10,000 busy tenants, about 0.2 s and then 1 s of the database's CPU at
-- each restart or deploy; docs/scale.md). A new table: nothing on the jobs table changes.
CREATE TABLE async_jobs_rollup_span (
    id           boolean PRIMARY KEY DEFAULT true CHECK (id),
    rolled_from  timestamptz NOT NULL,
    rolled_until timestamptz NOT NULL
);
