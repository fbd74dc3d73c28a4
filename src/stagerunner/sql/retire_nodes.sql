-- retire_nodes: owners known to be dead (a replaced producer) lose their heartbeat now,
-- so rescue_orphans hands their tasks back without waiting for the expiry.
UPDATE stagerunner.nodes
SET heartbeat_at = '-infinity'
WHERE owner = ANY(%(owners)s::text[]);
