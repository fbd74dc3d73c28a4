-- finish_tasks: running -> success | error | timeout | cancelled | waiting (retry, lost run or
-- snooze; a snooze gives its attempt back: refund).
-- Many outcomes in one statement. Guarded by status, owner and attempt: a row that was
-- rescued, released or re-claimed since is left alone and is not returned; the others
-- come back with the status they now have.
-- (A retry of a task whose cancel was requested ends cancelled: tasks_cancel_wins.)
-- The arrays are bound in binary format (the "b" placeholders): psycopg dumps a list as
-- text in Python, ~3x slower for the producer's batches of 64 outcomes.
-- A row another transaction holds locked (an application's cancel inside its own long
-- transaction, say) is skipped and comes back with status NULL: the caller writes it
-- again later, instead of every outcome of the node, and every rescue, waiting for it.
WITH free AS (
    SELECT id FROM stagerunner.tasks WHERE id = ANY(%(ids)b::bigint[]) FOR UPDATE SKIP LOCKED
),
written AS (
UPDATE stagerunner.tasks AS t
SET status = o.status,
    result = o.result,
    last_error = coalesce(o.error, t.last_error),
    errors = CASE WHEN o.error IS NULL THEN t.errors
                  ELSE t.errors || jsonb_build_array(jsonb_build_object(
                      'attempt', o.attempt, 'status', o.reported, 'error', o.error,
                      'at', now(), 'runtime_ms', o.runtime_ms))
             END,
    lost = t.lost + o.lost,
    kills = t.kills + o.kills,
    attempts = t.attempts - o.refund,
    run_at = CASE WHEN o.status = 'waiting' THEN now() + make_interval(secs => o.delay_s)
                  ELSE t.run_at END,
    claimed_by = CASE WHEN o.status = 'waiting' THEN NULL ELSE t.claimed_by END,
    claimed_at = CASE WHEN o.status = 'waiting' THEN NULL ELSE t.claimed_at END,
    finished_at = CASE WHEN o.status = 'waiting' THEN NULL ELSE now() END,
    -- the last run that started: where it ran, its deadline and how long it took
    runtime_ms = CASE WHEN o.deadline_s IS NULL THEN t.runtime_ms ELSE o.runtime_ms END,
    deadline_s = coalesce(o.deadline_s, t.deadline_s),
    consumer = CASE WHEN o.deadline_s IS NULL THEN t.consumer ELSE o.consumer END
FROM unnest(
    %(ids)b::bigint[], %(attempts)b::integer[], %(statuses)b::stagerunner.task_status[],
    %(reported)b::text[], %(results)b::jsonb[], %(errors)b::text[], %(delays)b::double precision[],
    %(lost)b::integer[], %(kills)b::integer[], %(runtimes)b::double precision[],
    %(consumers)b::integer[], %(deadlines)b::double precision[], %(refunds)b::integer[]
) AS o(id, attempt, status, reported, result, error, delay_s, lost, kills, runtime_ms,
       consumer, deadline_s, refund)
WHERE t.id = o.id
  AND t.id IN (SELECT id FROM free)
  AND t.status = 'running'
  AND t.claimed_by = %(owner)s
  AND t.attempts = o.attempt
RETURNING t.id, t.status::text AS status
)
SELECT id, status FROM written
UNION ALL
SELECT b.id, NULL FROM unnest(%(ids)b::bigint[]) AS b(id)
WHERE b.id NOT IN (SELECT id FROM free)
  AND EXISTS (SELECT FROM stagerunner.tasks WHERE id = b.id);  -- there, but locked
