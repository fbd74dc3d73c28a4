-- rescue_orphans: running on an owner whose heartbeat expired -> waiting (or error once
-- a task has been lost %(lost_limit)s times). A lost run is not a failed attempt.
-- Then forget owners that are long dead and hold nothing.
WITH dead AS (
    SELECT owner
    FROM stagerunner.nodes
    WHERE heartbeat_at < now() - make_interval(secs => %(expiry)s)
),
orphans AS (
    SELECT t.id
    FROM stagerunner.tasks AS t
    WHERE t.status = 'running'
      AND (t.claimed_by IN (SELECT owner FROM dead)
           OR NOT EXISTS (SELECT 1 FROM stagerunner.nodes AS n WHERE n.owner = t.claimed_by))
    FOR UPDATE SKIP LOCKED
),
rescued AS (
    UPDATE stagerunner.tasks AS t
    SET status = CASE WHEN t.cancel_requested_at IS NOT NULL THEN 'cancelled'::stagerunner.task_status
                      WHEN t.lost + 1 >= %(lost_limit)s THEN 'error'
                      ELSE 'waiting' END,
        lost = t.lost + 1,
        last_error = 'lost: its node (' || t.claimed_by || ') stopped heartbeating while it ran',
        errors = t.errors || jsonb_build_array(jsonb_build_object(
            'attempt', t.attempts, 'status', 'lost', 'at', now(),
            'error', 'its node (' || t.claimed_by || ') stopped heartbeating while it ran')),
        run_at = now(),
        claimed_by = CASE WHEN t.lost + 1 >= %(lost_limit)s OR t.cancel_requested_at IS NOT NULL
                          THEN t.claimed_by END,
        claimed_at = CASE WHEN t.lost + 1 >= %(lost_limit)s OR t.cancel_requested_at IS NOT NULL
                          THEN t.claimed_at END,
        finished_at = CASE WHEN t.lost + 1 >= %(lost_limit)s OR t.cancel_requested_at IS NOT NULL
                           THEN now() END
    FROM orphans
    WHERE t.id = orphans.id
    RETURNING t.id, t.status
),
forgotten AS (
    DELETE FROM stagerunner.nodes
    WHERE heartbeat_at < now() - make_interval(secs => %(expiry)s * 20)
      AND NOT EXISTS (SELECT 1 FROM stagerunner.tasks AS t
                      WHERE t.status = 'running' AND t.claimed_by = nodes.owner)
)
SELECT id, status::text FROM rescued;
