-- insert_staged_tasks: (new) -> waiting for every staged row, in the order staged (ids
-- ascend with ord). The ids come back as one array, ascending: one value to read
-- instead of a row per task (a large enqueue's ~0.5 µs a task on the client).
WITH inserted AS (
    INSERT INTO stagerunner.tasks (name, args, queue, priority, max_attempts, timeout_s, run_at)
    SELECT name, args, queue, priority, max_attempts, timeout_s,
           coalesce(run_at, now() + make_interval(secs => coalesce(delay_s, 0)))
    FROM pg_temp.stagerunner_staged_tasks
    ORDER BY ord
    RETURNING id
)
SELECT coalesce(array_agg(id ORDER BY id), '{}') AS ids FROM inserted;
