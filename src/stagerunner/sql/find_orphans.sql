-- find_orphans: read-only; running tasks whose owner's lease expired (by the owner's own
-- lease length, whatever the rescuer's settings), or whose owner never registered. The
-- rescuer hands them back through finish_tasks, guarded by that owner and attempt, so
-- two rescuers racing write once.
SELECT t.id, t.attempts, t.lost, t.kills, t.max_attempts, t.claimed_by
FROM stagerunner.tasks AS t
WHERE t.status = 'running'
  AND (t.claimed_by IN (SELECT owner FROM stagerunner.nodes WHERE expires_at < now())
       OR NOT EXISTS (SELECT 1 FROM stagerunner.nodes AS n WHERE n.owner = t.claimed_by))
ORDER BY t.id
LIMIT %(limit)s;
