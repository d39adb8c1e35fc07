-- The listings' indexes in ascending id order, walked backward for newest first (issue 21).
--
-- 0018's async_jobs_tenant_id (tenant_id, id DESC) and async_jobs_failed_id (id DESC) held
-- the newest id of a tenant (or of the failed jobs) at the left edge of its range, where
-- every new entry went. PostgreSQL splits a full page that is not the rightmost of its range
-- in half, and a half on the older side got no entry again: the index stayed about half
-- full, and each split wrote about 3.8 kB of WAL. In the same order ascending, a new entry
-- goes at the right edge, where a split keeps the older page nearly full and writes little
-- to the new one.
--
-- Measured (README "Speed"; docs/scale.md, "The listing indexes ascending"): a batch of
-- 1,000 like jobs of one tenant wrote 523 bytes of WAL a job, now 494; one by one 611, now
-- 581; the index of 51,000 such jobs took 3.6 MB, now 2.0. Jobs spread over 200 tenants
-- write as much as before: there the new entries fall inside the index either way.
--
-- The listings read the same entries in the same order, backward, as they already read the
-- primary key (the plan tests name the index and the direction).
--
-- On a table that already holds millions of rows, build the two new indexes first without
-- blocking writes (CREATE INDEX CONCURRENTLY with these names and definitions;
-- docs/scale.md): the migration then finds them and only drops the old ones.
CREATE INDEX IF NOT EXISTS async_jobs_tenant_ids ON async_jobs (tenant_id, id);
CREATE INDEX IF NOT EXISTS async_jobs_failed_ids
    ON async_jobs (id) WHERE status IN ('failed', 'cancelled');
DROP INDEX IF EXISTS async_jobs_tenant_id;
DROP INDEX IF EXISTS async_jobs_failed_id;
