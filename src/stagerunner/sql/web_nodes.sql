-- web_nodes: read-only; every producer lifetime still on record, with its heartbeat age
-- (NULL once retired), consumers, what its heartbeat says about its processes, and the
-- tasks it holds running (through tasks_running_owner_idx).
SELECT n.owner, n.node, n.host, n.pid, n.queues, n.started_at, n.consumers, n.info,
       CASE WHEN isfinite(n.heartbeat_at)
            THEN extract(epoch FROM now() - n.heartbeat_at)::double precision END AS beat_age_s,
       (SELECT count(*)
        FROM stagerunner.tasks AS t
        WHERE t.status = 'running'
          AND t.claimed_by = n.owner) AS running
FROM stagerunner.nodes AS n
ORDER BY isfinite(n.heartbeat_at) DESC, n.node, n.started_at DESC
LIMIT %(limit)s;
