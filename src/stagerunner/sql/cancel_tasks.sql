-- cancel_tasks: a cancel is requested on waiting and running tasks. A waiting one ends
-- cancelled at once (tasks_cancel_wins); for a running one its owner is told over NOTIFY
-- stagerunner_cancel to kill the job, which then ends cancelled.
WITH flagged AS (
    UPDATE stagerunner.tasks AS t
    SET cancel_requested_at = now()
    WHERE t.id = ANY(%(ids)s::bigint[])
      AND t.status IN ('waiting', 'running')
    RETURNING t.id, t.status
),
told AS (
    SELECT pg_notify('stagerunner_cancel', running.ids)
    FROM (SELECT string_agg(id::text, ',') AS ids FROM flagged WHERE status = 'running') AS running
    WHERE running.ids IS NOT NULL
)
-- told is referenced in the select list: a CTE nobody reads is never run.
SELECT f.id, f.status::text AS status, (SELECT count(*) FROM told) AS notified
FROM flagged AS f
ORDER BY f.id;
