-- release_tasks: running (claimed, never started) -> waiting, as if never claimed.
-- Guarded by owner and attempt; used at shutdown and for a dead consumer's backlog.
UPDATE stagerunner.tasks AS t
SET status = CASE WHEN t.cancel_requested_at IS NULL THEN 'waiting'::stagerunner.task_status
                  ELSE 'cancelled' END,
    finished_at = CASE WHEN t.cancel_requested_at IS NULL THEN NULL ELSE now() END,
    attempts = t.attempts - 1,
    claimed_by = NULL,
    claimed_at = NULL
FROM unnest(%(ids)s::bigint[], %(attempts)s::integer[]) AS r(id, attempt)
WHERE t.id = r.id
  AND t.status = 'running'
  AND t.claimed_by = %(owner)s
  AND t.attempts = r.attempt
RETURNING t.id;
