-- cancel_tasks: waiting -> cancelled at once; running -> cancel requested, and its owner is
-- told over NOTIFY stagerunner_cancel to kill the job (it then ends cancelled).
WITH flagged AS (
    UPDATE stagerunner.tasks AS t
    SET status = CASE WHEN t.status = 'waiting' THEN 'cancelled'::stagerunner.task_status
                      ELSE t.status END,
        finished_at = CASE WHEN t.status = 'waiting' THEN now() ELSE t.finished_at END,
        cancel_requested_at = now()
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
