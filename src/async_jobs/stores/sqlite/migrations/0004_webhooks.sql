-- Webhooks: one delivery per terminal transition of a job with a webhook_url, sent by the
-- leading scheduler. Mirrors the PostgreSQL migration of the same name; times are REAL unix
-- epoch seconds and attempt_log is JSON text.

CREATE TABLE async_jobs_webhook_deliveries (
    id              TEXT NOT NULL PRIMARY KEY,
    job_id          TEXT NOT NULL,
    job_finished_at REAL NOT NULL,
    tenant_id       TEXT NOT NULL,
    url             TEXT NOT NULL,
    event           TEXT NOT NULL CHECK (event IN ('succeeded', 'failed', 'cancelled')),
    status          TEXT NOT NULL DEFAULT 'pending'
        CHECK (status IN ('pending', 'delivered', 'failed')),
    attempts        INTEGER NOT NULL DEFAULT 0 CHECK (attempts >= 0),
    max_attempts    INTEGER NOT NULL DEFAULT 8 CHECK (max_attempts >= 1),
    next_attempt_at REAL NOT NULL,
    lease_token     TEXT,
    attempt_log     TEXT NOT NULL DEFAULT '[]',
    created_at      REAL NOT NULL,
    updated_at      REAL NOT NULL,
    UNIQUE (job_id, job_finished_at)
) STRICT;

CREATE INDEX async_jobs_webhook_deliveries_due
    ON async_jobs_webhook_deliveries (next_attempt_at) WHERE status = 'pending';

CREATE INDEX async_jobs_webhook_outbox
    ON async_jobs (finished_at)
    WHERE webhook_url IS NOT NULL AND status IN ('succeeded', 'failed', 'cancelled');

-- Deleting a job (retention) deletes its deliveries (foreign keys are off in SQLite by
-- default, so a trigger does what ON DELETE CASCADE does on PostgreSQL).
CREATE TRIGGER async_jobs_webhook_deliveries_cascade
    AFTER DELETE ON async_jobs
    FOR EACH ROW
BEGIN
    DELETE FROM async_jobs_webhook_deliveries WHERE job_id = OLD.id;
END;
