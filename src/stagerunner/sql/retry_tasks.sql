-- retry_tasks: error | timeout | cancelled -> waiting, now, with one more attempt allowed.
-- By ids (any finished task but a success), or every failed one (error, timeout) when
-- %(failed)s is true. The errors history is kept.
UPDATE stagerunner.tasks AS t
SET status = 'waiting',
    run_at = now(),
    max_attempts = greatest(t.max_attempts, t.attempts - t.lost + 1),
    result = NULL,
    finished_at = NULL,
    claimed_by = NULL,
    claimed_at = NULL,
    cancel_requested_at = NULL
WHERE t.finished_at IS NOT NULL
  AND t.status <> 'success'
  AND (t.id = ANY(%(ids)s::bigint[]) OR %(failed)s AND t.status IN ('error', 'timeout'))
RETURNING t.id;
