-- web_tasks_page: read-only; tasks matching the filters, newest first, with ids in
-- [%(floor)s, %(before)s). Keyset pagination on the primary key: a page reads at most the
-- ids in that range (the caller bounds it), never counts, never sorts the table.
-- %(text)s is an ILIKE pattern matched against the arguments and the last error.
SELECT id, name, queue, priority, status::text AS status, attempts, lost, max_attempts,
       created_at, run_at, claimed_by, consumer, finished_at, runtime_ms, deadline_s, timeout_s,
       left(args::text, 300) AS args_head,
       right(coalesce(last_error, ''), 2000) AS error_tail
FROM stagerunner.tasks
WHERE id < %(before)s
  AND id >= %(floor)s
  AND (%(statuses)s::stagerunner.task_status[] IS NULL
       OR status = ANY(%(statuses)s::stagerunner.task_status[]))
  AND (%(queue)s::text IS NULL OR queue = %(queue)s)
  AND (%(name)s::text IS NULL OR name ILIKE %(name)s)
  AND (%(since)s::timestamptz IS NULL OR created_at >= %(since)s)
  AND (%(until)s::timestamptz IS NULL OR created_at < %(until)s)
  AND (%(text)s::text IS NULL OR args::text ILIKE %(text)s OR last_error ILIKE %(text)s)
ORDER BY id DESC
LIMIT %(limit)s;
