-- get_result: read-only; what stagerunner.result() needs of one task.
SELECT id, name, status::text AS status, result, last_error
FROM stagerunner.tasks
WHERE id = %(id)s;
