-- Webhooks: one delivery per terminal transition of a job with a webhook_url, sent by the
-- leading scheduler (core/webhooks.py), never by the worker's outcome statement.

-- The deliveries. (job_id, job_finished_at) names the transition: a job retried by hand
-- that ends again has a new finished_at, and so a new delivery. A sender leases the current
-- attempt (attempts + 1, a fresh lease_token, next_attempt_at pushed past the lease), and
-- its record of the attempt is fenced by both. attempt_log keeps every attempt: unix epoch
-- seconds, HTTP status code or error, duration. Deleting a job deletes its deliveries.
CREATE TABLE async_jobs_webhook_deliveries (
    id              uuid PRIMARY KEY,
    job_id          uuid NOT NULL REFERENCES async_jobs (id) ON DELETE CASCADE,
    job_finished_at timestamptz NOT NULL,
    tenant_id       text NOT NULL,
    url             text NOT NULL,
    event           text NOT NULL CHECK (event IN ('succeeded', 'failed', 'cancelled')),
    status          text NOT NULL DEFAULT 'pending'
        CHECK (status IN ('pending', 'delivered', 'failed')),
    attempts        integer NOT NULL DEFAULT 0 CHECK (attempts >= 0),
    max_attempts    integer NOT NULL DEFAULT 8 CHECK (max_attempts >= 1),
    next_attempt_at timestamptz NOT NULL DEFAULT now(),
    lease_token     uuid,
    attempt_log     jsonb NOT NULL DEFAULT '[]'::jsonb,
    created_at      timestamptz NOT NULL DEFAULT now(),
    updated_at      timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT async_jobs_webhook_deliveries_transition UNIQUE (job_id, job_finished_at)
);

-- Due deliveries, for the sender's lease.
CREATE INDEX async_jobs_webhook_deliveries_due
    ON async_jobs_webhook_deliveries (next_attempt_at) WHERE status = 'pending';

-- Ended jobs with a webhook, for the outbox sweep that makes their deliveries: it walks
-- these rows only (recently finished ones first), never the whole table.
CREATE INDEX async_jobs_webhook_outbox
    ON async_jobs (finished_at)
    WHERE webhook_url IS NOT NULL AND status IN ('succeeded', 'failed', 'cancelled');
