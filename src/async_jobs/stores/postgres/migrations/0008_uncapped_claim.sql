-- A use case without max_concurrent has no cap any more, and the claim of a use case with
-- neither a cap nor a quota takes no advisory lock and counts no active jobs: it picks its
-- rows with FOR UPDATE SKIP LOCKED instead. The definition is claim.sql's.

-- include: claim.sql
