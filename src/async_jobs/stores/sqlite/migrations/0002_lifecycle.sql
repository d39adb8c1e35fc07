-- The job lifecycle: why a job last changed state, the history of its attempts, a backoff of
-- its own. Mirrors the PostgreSQL migration of the same name; SQLite has no NOTIFY, so a
-- worker in another process learns of a cancellation when it renews its leases.
--
-- history is a JSON array of the latest counted attempts (times as REAL epoch seconds);
-- backoff is the JSON of a Backoff, or NULL for the worker's own policy.

ALTER TABLE async_jobs ADD COLUMN reason TEXT;

ALTER TABLE async_jobs ADD COLUMN history TEXT NOT NULL DEFAULT '[]';

ALTER TABLE async_jobs ADD COLUMN backoff TEXT;
