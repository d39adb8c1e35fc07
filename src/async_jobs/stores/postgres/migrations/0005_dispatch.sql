-- Broker transports (sqs): the scheduler dispatches due jobs (pending -> queued, with a
-- dispatch id that the broker message carries and a deadline), and a worker that receives
-- the message claims the job by that ticket (queued -> running). A dispatch that nobody
-- claimed by its deadline goes back to pending and is sent again.

ALTER TABLE async_jobs
    ADD COLUMN dispatch_id uuid,
    ADD COLUMN dispatch_expires_at timestamptz;

-- Lapsed dispatches, for the dispatcher's sweep.
CREATE INDEX async_jobs_dispatched
    ON async_jobs (dispatch_expires_at) WHERE status = 'queued';

-- The claim gains p_dispatch: with it, the chosen jobs become queued (attempts unchanged,
-- no lease: a dispatch id and its deadline instead) under exactly the same limits, since
-- queued jobs hold their slots like running ones. The signature of 0003 goes (a database
-- built by this version never had it: 0003 no longer creates it).
DROP FUNCTION IF EXISTS async_jobs_claim(
    integer, text[], text[], text, double precision, integer, text[], integer[], text[],
    text[], integer[], double precision[]
);

-- include: claim.sql
