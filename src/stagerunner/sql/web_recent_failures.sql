-- web_recent_failures: read-only; the newest tasks that ended in error or timeout within
-- the last %(window_s)s seconds, walked backwards along tasks_finished_at_idx.
SELECT id, name, queue, status::text AS status, attempts, finished_at, runtime_ms, deadline_s,
       right(coalesce(last_error, ''), 2000) AS error_tail
FROM stagerunner.tasks
WHERE finished_at >= now() - make_interval(secs => %(window_s)s)
  AND status IN ('error', 'timeout')
ORDER BY finished_at DESC
LIMIT %(limit)s;
