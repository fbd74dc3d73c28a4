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
-- Each locked row finds its outcome by its position in the arrays (array_position), not
-- by joining the arrays as a table: a prepared statement's generic plan guesses 10 rows
-- for an unnest and 1 for our running rows, and joined them in a nested loop, whose cost
-- grows with the square of the batch (64 outcomes: ~17 ms instead of ~5). Here every
-- step is linear whatever the estimates: the lock by primary key, the update by
-- primary key, and the guards read from the row as locked.
WITH o AS (
    SELECT l.*,
           (%(statuses)b::stagerunner.task_status[])[l.i] AS status,
           (%(reported)b::text[])[l.i] AS reported,
           (%(results)b::jsonb[])[l.i] AS result,
           (%(errors)b::text[])[l.i] AS error,
           (%(delays)b::double precision[])[l.i] AS delay_s,
           (%(lost)b::integer[])[l.i] AS lost,
           (%(kills)b::integer[])[l.i] AS kills,
           (%(runtimes)b::double precision[])[l.i] AS runtime_ms,
           (%(consumers)b::integer[])[l.i] AS consumer,
           (%(deadlines)b::double precision[])[l.i] AS deadline_s,
           (%(refunds)b::integer[])[l.i] AS refund
    FROM (
        SELECT id, status AS row_status, claimed_by AS row_owner, attempts AS row_attempts,
               array_position(%(ids)b::bigint[], id) AS i
        FROM stagerunner.tasks
        WHERE id = ANY(%(ids)b::bigint[])
        FOR UPDATE SKIP LOCKED
    ) AS l
),
written AS (
UPDATE stagerunner.tasks AS t
SET status = o.status,
    result = o.result,
    last_error = coalesce(o.error, t.last_error),
    errors = CASE WHEN o.error IS NULL THEN t.errors
                  ELSE t.errors || jsonb_build_array(jsonb_build_object(
                      'attempt', o.row_attempts, 'status', o.reported, 'error', o.error,
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
FROM o
WHERE t.id = o.id
  -- the guards, on the row as locked above (no one can change it since): kept off `t`,
  -- where the planner could reach it through the running-owner index instead of the key
  AND o.row_status = 'running'
  AND o.row_owner = %(owner)s
  AND o.row_attempts = (%(attempts)b::integer[])[o.i]
RETURNING t.id, t.status::text AS status
)
SELECT id, status FROM written
UNION ALL
SELECT b.id, NULL FROM unnest(%(ids)b::bigint[]) AS b(id)
WHERE b.id NOT IN (SELECT id FROM o)
  AND EXISTS (SELECT FROM stagerunner.tasks WHERE id = b.id);  -- there, but locked
