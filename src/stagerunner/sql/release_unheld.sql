-- release_unheld: running rows of this owner that it does not know it holds -> waiting.
-- After a lost connection a claim may have committed without its rows reaching us.
UPDATE stagerunner.tasks AS t
SET status = CASE WHEN t.cancel_requested_at IS NULL THEN 'waiting'::stagerunner.task_status
                  ELSE 'cancelled' END,
    finished_at = CASE WHEN t.cancel_requested_at IS NULL THEN NULL ELSE now() END,
    attempts = t.attempts - 1,
    claimed_by = NULL,
    claimed_at = NULL
WHERE t.status = 'running'
  AND t.claimed_by = %(owner)s
  AND NOT (t.id = ANY(%(held)s::bigint[]))
RETURNING t.id;
