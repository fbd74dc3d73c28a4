-- retire_nodes: owners known to be dead (a replaced producer) lose their lease now, so
-- their tasks are rescued without waiting for it to run out.
UPDATE stagerunner.nodes
SET expires_at = '-infinity'
WHERE owner = ANY(%(owners)s::text[]);
