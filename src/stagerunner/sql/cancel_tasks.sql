-- cancel_tasks: a cancel is requested on waiting and running tasks. A waiting one ends
-- cancelled at once (tasks_cancel_wins); for a running one, NOTIFY stagerunner_cancel
-- tells every node to look up which of its tasks now have a cancel requested
-- (find_cancelled): the notification carries no ids, so it cannot outgrow a payload,
-- and a notification someone else sends cancels nothing the database does not say.
WITH flagged AS (
    UPDATE stagerunner.tasks AS t
    SET cancel_requested_at = now()
    WHERE t.id = ANY(%(ids)s::bigint[])
      AND t.status IN ('waiting', 'running')
    RETURNING t.id, t.status
),
told AS (
    SELECT pg_notify('stagerunner_cancel', '')
    WHERE EXISTS (SELECT 1 FROM flagged WHERE status = 'running')
)
-- told is referenced in the select list: a CTE nobody reads is never run.
SELECT f.id, f.status::text AS status, (SELECT count(*) FROM told) AS notified
FROM flagged AS f
ORDER BY f.id;
