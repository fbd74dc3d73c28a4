-- stage_tasks: a session's staging table for a large enqueue (COPY into it, then
-- insert_staged_tasks moves the rows): COPY is several times faster than binding
-- arrays, and rows without a uniqueness key need no ON CONFLICT. Temporary, so private
-- to the session and gone with it; its rows are gone when the transaction ends (ON COMMIT
-- DELETE ROWS: no DELETE of each row, no dead rows that no autovacuum would ever clean
-- up). The caller holds a transaction around the four steps.
CREATE TEMP TABLE IF NOT EXISTS stagerunner_staged_tasks (
    ord          integer NOT NULL,
    name         text NOT NULL,
    args         jsonb NOT NULL,
    queue        text NOT NULL,
    priority     smallint NOT NULL,
    max_attempts integer NOT NULL,
    timeout_s    double precision,
    delay_s      double precision,
    run_at       timestamptz
) ON COMMIT DELETE ROWS;
