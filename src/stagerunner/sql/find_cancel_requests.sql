-- find_cancel_requests: read-only; running tasks of %(owner)s whose cancel was requested.
-- A node that cannot LISTEN (transaction pooling without a direct LISTEN connection) never
-- hears stagerunner_cancel, so it asks on every poll instead (tasks_running_owner_idx).
SELECT id
FROM stagerunner.tasks
WHERE status = 'running'
  AND claimed_by = %(owner)s
  AND cancel_requested_at IS NOT NULL
ORDER BY id;
