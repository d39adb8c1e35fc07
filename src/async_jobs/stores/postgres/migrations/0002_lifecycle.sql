-- The job lifecycle: why a job last changed state, the history of its attempts, a backoff of
-- its own, and the wake-up a worker gets when a job it runs is to be cancelled.

ALTER TABLE async_jobs
    ADD COLUMN reason  text,
    ADD COLUMN history jsonb NOT NULL DEFAULT '[]'::jsonb,
    ADD COLUMN backoff jsonb;

-- One notification per running job whose cancellation is requested, delivered at commit;
-- the payload is the job id. Workers also learn it when they renew their leases.
CREATE FUNCTION async_jobs_notify_cancel() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('async_jobs_cancel', NEW.id::text);
    RETURN NULL;
END;
$$;

CREATE TRIGGER async_jobs_cancel_requested
    AFTER UPDATE OF cancel_requested ON async_jobs
    FOR EACH ROW
    WHEN (NEW.cancel_requested AND NOT OLD.cancel_requested AND NEW.status = 'running')
    EXECUTE FUNCTION async_jobs_notify_cancel();
