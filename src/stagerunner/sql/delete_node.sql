-- delete_node: a clean shutdown removes this owner's heartbeat row.
DELETE FROM stagerunner.nodes
WHERE owner = %(owner)s;
