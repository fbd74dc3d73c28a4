-- live_nodes: read-only; owners whose heartbeat is fresh.
SELECT owner, node, host, pid, queues, started_at,
       extract(epoch FROM now() - heartbeat_at)::double precision AS beat_age_s
FROM stagerunner.nodes
WHERE heartbeat_at >= now() - make_interval(secs => %(expiry)s)
ORDER BY node, started_at;
