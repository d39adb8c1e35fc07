-- Reads whose cost must not grow with the finished jobs the table holds (docs/scale.md).
-- Both indexes skip the rows that dominate a big table: finished_at is NULL until a job
-- ends, and succeeded jobs are most of what ends.
--
-- On a table that already holds millions of rows, build them first without blocking writes
-- (CREATE INDEX CONCURRENTLY ... with these names and definitions): the migration then finds
-- them and does nothing.

-- Terminal jobs by state and finish time: retention's delete_finished (one state, oldest
-- first) and the last hour of GET /stats read a range of it instead of scanning the table.
CREATE INDEX IF NOT EXISTS async_jobs_finished
    ON async_jobs (status, finished_at) WHERE finished_at IS NOT NULL;

-- Newest-first listings filtered by a state other than succeeded (failed jobs, the pending
-- ones, ...), which async_jobs_created answered by walking past every succeeded row.
CREATE INDEX IF NOT EXISTS async_jobs_unsucceeded_created
    ON async_jobs (created_at DESC, id DESC) WHERE status <> 'succeeded';

-- Jobs waiting for a retry (pending, started before): the last hour of GET /stats reads
-- them here instead of every pending job. Rows enter it only when an attempt fails.
CREATE INDEX IF NOT EXISTS async_jobs_retrying
    ON async_jobs (started_at) WHERE status = 'pending' AND started_at IS NOT NULL;
