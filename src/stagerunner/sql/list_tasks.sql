-- list_tasks: read-only; tasks filtered by status, queue, name and age, newest first.
SELECT id, name, queue, priority, status::text AS status, attempts, lost, max_attempts,
       run_at, created_at, finished_at, claimed_by,
       -- a traceback's last non-blank line is the exception, its first only "Traceback ..."
       left(coalesce(substring(last_error FROM '([^\n]*\S[^\n]*)\s*$'), ''), 200) AS error_head,
       extract(epoch FROM now() - created_at)::double precision AS age_s
FROM stagerunner.tasks
WHERE (%(status)s::text IS NULL OR status::text = %(status)s)
  AND (%(queue)s::text IS NULL OR queue = %(queue)s)
  AND (%(name)s::text IS NULL OR name LIKE %(name)s)
  AND (%(older_s)s::double precision IS NULL
       OR created_at < now() - make_interval(secs => %(older_s)s))
  AND (%(newer_s)s::double precision IS NULL
       OR created_at >= now() - make_interval(secs => %(newer_s)s))
ORDER BY id DESC
LIMIT %(limit)s;
