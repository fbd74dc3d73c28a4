-- live_nodes: read-only; owners whose lease has not run out.
SELECT owner, node, host, pid, queues, started_at, lease_s,
       extract(epoch FROM now() - heartbeat_at)::double precision AS beat_age_s
FROM stagerunner.nodes
WHERE expires_at > now()
ORDER BY node, started_at;
