-- find_cancelled: read-only; which of the tasks this owner holds have a cancel requested
-- (checked on every stagerunner_cancel notification and after every reconnect).
SELECT t.id
FROM stagerunner.tasks AS t
WHERE t.id = ANY(%(ids)s::bigint[])
  AND t.status = 'running'
  AND t.claimed_by = %(owner)s
  AND t.cancel_requested_at IS NOT NULL;
