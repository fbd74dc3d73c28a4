-- shots_heartbeat: the screenshots' seeded nodes beat again: worker-0 and worker-1 are alive,
-- worker-2 stays a minute and a half silent (dead).
UPDATE stagerunner.nodes
SET heartbeat_at = now() - CASE node WHEN 'worker-0' THEN interval '0.3 s'
                                     WHEN 'worker-1' THEN interval '0.8 s'
                                     ELSE interval '93 s' END;
