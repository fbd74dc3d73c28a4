-- shots_heartbeat: the screenshots' seeded nodes beat again: worker-0 and worker-1 are alive,
-- worker-2 stays a minute and a half silent (dead).
UPDATE stagerunner.nodes
SET heartbeat_at = now() - b.age, expires_at = now() - b.age + make_interval(secs => lease_s)
FROM (SELECT CASE WHEN n.node = 'worker-0' THEN interval '0.3 s'
                  WHEN n.node = 'worker-1' THEN interval '0.8 s'
                  ELSE interval '93 s' END AS age, n.owner
      FROM stagerunner.nodes AS n) AS b
WHERE b.owner = stagerunner.nodes.owner;
