-- web_nodes: read-only; every producer lifetime still on record, with its heartbeat age,
-- whether its lease still holds (alive: no other node may rescue its tasks yet), consumers, what its heartbeat says about its processes, and the
-- tasks it holds running (through tasks_running_owner_idx).
SELECT n.owner, n.node, n.host, n.pid, n.queues, n.started_at, n.consumers, n.info,
       extract(epoch FROM now() - n.heartbeat_at)::double precision AS beat_age_s,
       n.expires_at > now() AS alive, NOT isfinite(n.expires_at) AS retired, n.lease_s,
       (SELECT count(*)
        FROM stagerunner.tasks AS t
        WHERE t.status = 'running'
          AND t.claimed_by = n.owner) AS running
FROM stagerunner.nodes AS n
ORDER BY n.expires_at > now() DESC, n.node, n.started_at DESC
LIMIT %(limit)s;
