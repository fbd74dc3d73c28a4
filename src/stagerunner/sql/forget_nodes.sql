-- forget_nodes: owners whose lease ran out an hour ago and that hold no running task
-- lose their row.
DELETE FROM stagerunner.nodes AS n
WHERE n.expires_at < now() - interval '1 hour'
  AND NOT EXISTS (SELECT 1 FROM stagerunner.tasks AS t
                  WHERE t.status = 'running' AND t.claimed_by = n.owner);
