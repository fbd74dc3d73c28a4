-- beat_node: upsert this owner's heartbeat (database clock).
INSERT INTO stagerunner.nodes AS n (owner, node, host, pid, queues)
VALUES (%(owner)s, %(node)s, %(host)s, %(pid)s, %(queues)s)
ON CONFLICT (owner) DO UPDATE
SET heartbeat_at = now()
RETURNING n.owner;
