-- The span of time whose ended jobs the rollup holds (domain/rollup.py, extend_rolled), one
-- row, written with the rollup's rows: a process that starts leading goes on from it instead
-- of rolling up again what an earlier leader did. Mirrors the PostgreSQL migration of the
-- same name; times are REAL unix seconds.
CREATE TABLE async_jobs_rollup_span (
    id           INTEGER PRIMARY KEY CHECK (id = 1),
    rolled_from  REAL NOT NULL,
    rolled_until REAL NOT NULL
) STRICT;
