-- Broker transports: a queued job's dispatch id (the ticket its broker message carries)
-- and the time its dispatch lapses. Mirrors the PostgreSQL migration of the same name.

ALTER TABLE async_jobs ADD COLUMN dispatch_id TEXT;
ALTER TABLE async_jobs ADD COLUMN dispatch_expires_at REAL;

-- Lapsed dispatches, for the dispatcher's sweep.
CREATE INDEX async_jobs_dispatched
    ON async_jobs (dispatch_expires_at) WHERE status = 'queued';
