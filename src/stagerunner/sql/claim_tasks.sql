-- claim_tasks: waiting -> running.
-- At most %(limit)s due rows of one queue, highest priority first, then oldest run_at;
-- rows locked by another producer are skipped. The CTE is the fence that keeps the
-- LIMIT honest (PostgreSQL bug #15715).
-- A claim that got fewer rows than it asked for also says when the queue's next scheduled
-- task is due (next_due_s, seconds from this statement's now()), read in the same snapshot
-- and at the same now() as the claim: a row not due for the claim is counted here, so a
-- task that becomes due between the two can never be missed (it used to wait for the
-- fallback poll). With nothing claimed, the answer is one row whose claim columns are NULL.
WITH due AS (
    SELECT id
    FROM stagerunner.tasks
    WHERE status = 'waiting'
      AND queue = %(queue)s
      AND run_at <= now()
      AND attempts < 2147483647  -- a counter at its limit (hand-written) would fail the claim
      -- only while our own lease runs: an owner the database counts as dead (its tasks may
      -- be rescued already) must not start them again beside its jobs still running
      AND EXISTS (SELECT FROM stagerunner.nodes WHERE owner = %(owner)s AND expires_at > now())
    ORDER BY priority DESC, run_at, id
    LIMIT %(limit)s
    FOR UPDATE SKIP LOCKED
),
claimed AS (
    UPDATE stagerunner.tasks AS t
    SET status = 'running',
        attempts = t.attempts + 1,
        claimed_by = %(owner)s,
        claimed_at = now()
    FROM due
    WHERE t.id = due.id
    RETURNING t.id, t.attempts, t.name, t.args::text AS args, t.timeout_s, t.queue,
              t.lost, t.kills, t.max_attempts, t.priority, t.run_at,
              extract(epoch FROM t.created_at)::double precision AS enqueued_at
),
scheduled AS (
    SELECT extract(epoch FROM min(run_at) - now())::double precision AS next_due_s
    FROM stagerunner.tasks
    WHERE status = 'waiting'
      AND queue = %(queue)s
      AND run_at > now()
      AND (SELECT count(*) FROM claimed) < %(limit)s  -- a full claim needs no answer
)
SELECT c.*, s.next_due_s
FROM scheduled AS s
LEFT JOIN claimed AS c ON true;
