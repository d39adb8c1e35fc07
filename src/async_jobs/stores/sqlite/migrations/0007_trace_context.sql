-- The W3C trace context of the code that enqueued a job (see the PostgreSQL migration).
ALTER TABLE async_jobs ADD COLUMN trace_context TEXT;
