-- claim_tasks: waiting -> running.
-- At most %(limit)s due rows of one queue, highest priority first, then oldest run_at;
-- rows locked by another producer are skipped. The CTE is the fence that keeps the
-- LIMIT honest (PostgreSQL bug #15715).
WITH due AS (
    SELECT id
    FROM stagerunner.tasks
    WHERE status = 'waiting'
      AND queue = %(queue)s
      AND run_at <= now()
    ORDER BY priority DESC, run_at, id
    LIMIT %(limit)s
    FOR UPDATE SKIP LOCKED
)
UPDATE stagerunner.tasks AS t
SET status = 'running',
    attempts = t.attempts + 1,
    claimed_by = %(owner)s,
    claimed_at = now()
FROM due
WHERE t.id = due.id
RETURNING t.id, t.attempts, t.name, t.args::text AS args, t.timeout_s, t.queue,
          t.lost, t.max_attempts, t.priority, t.run_at;
