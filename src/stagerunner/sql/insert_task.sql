-- insert_task: (new) -> waiting for one row: insert_tasks for the commonest call, without
-- binding arrays (a third of a one-at-a-time enqueue's cost went to them). Same columns,
-- same uniqueness rule: a row whose unique_key is held is not inserted and not returned.
INSERT INTO stagerunner.tasks
    (name, args, queue, priority, max_attempts, timeout_s, run_at, unique_key)
VALUES (%(name)s, %(args)s::jsonb, %(queue)s, %(priority)s, %(max_attempts)s, %(timeout)s,
        coalesce(%(run_at)s::timestamptz,
                 now() + make_interval(secs => coalesce(%(delay)s::double precision, 0))),
        %(unique_key)s)
ON CONFLICT (unique_key) WHERE unique_key IS NOT NULL AND status IN ('waiting', 'running')
DO NOTHING
RETURNING id, unique_key;
