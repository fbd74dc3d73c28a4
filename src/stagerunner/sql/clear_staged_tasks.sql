-- clear_staged_tasks: empty the staging table before a large enqueue fills it: an earlier
-- one in the same, still open, transaction (the caller's own) staged rows that are only
-- deleted at its commit.
TRUNCATE pg_temp.stagerunner_staged_tasks;
