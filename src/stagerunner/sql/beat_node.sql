-- beat_node: extend this owner's lease, only while it has not expired: an owner whose
-- lease ran out may have had its tasks rescued, so it gets no row back and must stop.
-- It also records what the producer last knew of its consumers (for operators).
UPDATE stagerunner.nodes AS n
SET heartbeat_at = now(),
    expires_at = now() + make_interval(secs => n.lease_s),
    consumers = %(consumers)s,
    info = %(info)s::jsonb
WHERE n.owner = %(owner)s
  AND n.expires_at > now()
RETURNING extract(epoch FROM n.expires_at - now())::double precision AS lease_left_s;
