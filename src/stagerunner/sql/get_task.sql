-- get_task: read-only; one task with everything an operator may want to see.
SELECT id, name, args, queue, priority, status::text AS status, attempts, lost, max_attempts,
       timeout_s, run_at, unique_key, result, last_error, errors, claimed_by, claimed_at,
       finished_at, created_at, cancel_requested_at,
       extract(epoch FROM finished_at - claimed_at)::double precision AS last_run_s
FROM stagerunner.tasks
WHERE id = %(id)s;
