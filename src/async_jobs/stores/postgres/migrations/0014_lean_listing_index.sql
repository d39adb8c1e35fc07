-- What every job pays for on its way through, and what no query needs (issue 21).
--
-- async_jobs_unsucceeded_created (0009) held every job while it waited and while it ran: an
-- entry at the insert and another at the claim (the claim's update is never HOT: status is
-- in the partial indexes' predicates), for the sake of listings by a rare state. It now
-- holds the jobs that ended failed or cancelled only, which enter it once, when they end;
-- an enqueue and a claim no longer touch it. Measured (server CPU per job of a batch insert,
-- 10,000 jobs, 6 runs alternating with 0009's index, loaded 2-core machine): 12.5 -> 11 us
-- (medians). A listing by failed or cancelled reads its own rows, as before and without the
-- pending rows in the way; a listing by pending, queued or running walks async_jobs_created
-- past the finished rows, as it did before 0009 (docs/scale.md).
--
-- On a table that already holds millions of rows, build the new index first without
-- blocking writes (CREATE INDEX CONCURRENTLY ... with this name and definition): the
-- migration then finds it, and only drops the old one.
CREATE INDEX IF NOT EXISTS async_jobs_failed_created
    ON async_jobs (created_at DESC, id DESC) WHERE status IN ('failed', 'cancelled');
DROP INDEX IF EXISTS async_jobs_unsucceeded_created;

-- The claim finds its tenants with async_jobs_due_tenants since 0012; nothing calls this.
DROP FUNCTION IF EXISTS async_jobs_pending_tenants(text);
