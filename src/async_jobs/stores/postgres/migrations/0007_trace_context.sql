-- The W3C trace context (JSON of traceparent and tracestate) of the code that enqueued a
-- job, so that its attempts continue that trace in whichever process runs them. NULL when
-- the enqueuing process does not trace. No index: it is read only with the job's row.
ALTER TABLE async_jobs ADD COLUMN trace_context text;
