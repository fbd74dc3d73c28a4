-- insert_tasks_plain: (new) -> waiting, many rows without uniqueness keys in one statement.
-- Ids are drawn in input order (nextval in the scan of unnest), so sorted ids match the input.
INSERT INTO stagerunner.tasks
    (id, name, args, queue, priority, max_attempts, timeout_s, run_at)
SELECT nextval(pg_get_serial_sequence('stagerunner.tasks', 'id')), name, args, queue, priority,
       max_attempts, timeout_s, coalesce(run_at, now() + make_interval(secs => coalesce(delay_s, 0)))
FROM unnest(
    %(names)s::text[], %(args)s::jsonb[], %(queues)s::text[], %(priorities)s::smallint[],
    %(max_attempts)s::integer[], %(timeouts)s::double precision[],
    %(delays)s::double precision[], %(run_ats)s::timestamptz[]
) AS i(name, args, queue, priority, max_attempts, timeout_s, delay_s, run_at)
RETURNING id;
