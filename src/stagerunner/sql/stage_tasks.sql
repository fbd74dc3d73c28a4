-- stage_tasks: a session's staging table for a large enqueue (COPY into it, then
-- insert_staged_tasks moves the rows): COPY is several times faster than binding
-- arrays, and rows without a uniqueness key need no ON CONFLICT. Temporary, so private
-- to the session and gone with it; the caller holds a transaction around the three steps.
CREATE TEMP TABLE IF NOT EXISTS stagerunner_new_tasks (
    ord          integer NOT NULL,
    name         text NOT NULL,
    args         jsonb NOT NULL,
    queue        text NOT NULL,
    priority     smallint NOT NULL,
    max_attempts integer NOT NULL,
    timeout_s    double precision,
    delay_s      double precision,
    run_at       timestamptz
);
