-- register_node: a new owner (or one that holds no task) takes a fresh lease of
-- %(lease_s)s seconds on the database clock.
INSERT INTO stagerunner.nodes AS n (owner, node, host, pid, queues, lease_s, expires_at,
                                    consumers, info)
VALUES (%(owner)s, %(node)s, %(host)s, %(pid)s, %(queues)s, %(lease_s)s,
        now() + make_interval(secs => %(lease_s)s), %(consumers)s, %(info)s::jsonb)
ON CONFLICT (owner) DO UPDATE
SET heartbeat_at = now(),
    lease_s = excluded.lease_s,
    expires_at = excluded.expires_at,
    consumers = excluded.consumers,
    info = excluded.info
RETURNING extract(epoch FROM n.expires_at - now())::double precision AS lease_left_s;
