-- The listings walk the ids instead of created_at (issue 21, docs/scale.md "0018").
--
-- Job ids are UUID version 7 made in the order of time, and since this release a job's
-- created_at is its id's own time (domain.jobs.time_of_id), so newest first by id is newest
-- first by created_at. Three indexes led by created_at are replaced by the same orders on the
-- id: the primary key for every job, (tenant_id, id DESC) for a tenant's, (id DESC) for the
-- failed and cancelled ones. async_jobs_created was a full index: every claim and every
-- completion (updates that cannot be HOT) added an entry at the left edge of its tree.
-- Measured with the two index sets in turns: batches 1.04-1.12x beside ten million finished
-- jobs, the drain 1.10x on an empty table (README "Speed").
--
-- Rows written before this release keep the created_at the database gave them, a few
-- milliseconds after their id's time; they list by their id. Ids made before UUID version 7
-- (before 2026-11-23) tell no time: such rows list out of time order, and the listings'
-- created_after and created_before may leave them out.
--
-- On a table that already holds millions of rows, build the two new indexes first without
-- blocking writes (CREATE INDEX CONCURRENTLY with these names and definitions; docs/scale.md):
-- the migration then finds them and only drops the old ones.
CREATE INDEX IF NOT EXISTS async_jobs_tenant_id ON async_jobs (tenant_id, id DESC);
CREATE INDEX IF NOT EXISTS async_jobs_failed_id
    ON async_jobs (id DESC) WHERE status IN ('failed', 'cancelled');
DROP INDEX IF EXISTS async_jobs_created;
DROP INDEX IF EXISTS async_jobs_tenant_created;
DROP INDEX IF EXISTS async_jobs_failed_created;

-- The least id made in the millisecond of p_at: ids made at or after p_at are not below it,
-- ids made before the previous millisecond are. The listings' created_after and
-- created_before become bounds of an index walk on the id with it (created_at is checked
-- on the rows as well).
CREATE FUNCTION async_jobs_id_floor(p_at timestamptz) RETURNS uuid
LANGUAGE sql STABLE PARALLEL SAFE AS $$
    SELECT (lpad(to_hex(floor(extract(epoch FROM p_at) * 1000)::bigint), 12, '0')
            || '00000000000000000000')::uuid
$$;
