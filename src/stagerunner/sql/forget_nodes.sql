-- forget_nodes: owners dead for 20 expiries that hold no running task lose their row.
DELETE FROM stagerunner.nodes AS n
WHERE n.heartbeat_at < now() - make_interval(secs => %(expiry)s * 20)
  AND NOT EXISTS (SELECT 1 FROM stagerunner.tasks AS t
                  WHERE t.status = 'running' AND t.claimed_by = n.owner);
