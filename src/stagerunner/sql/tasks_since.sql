-- tasks_since: read-only; every task newer than an id, oldest first (a test's drain).
SELECT id, name, status::text AS status, result, last_error, attempts
FROM stagerunner.tasks
WHERE id > %(id)s
ORDER BY id;
