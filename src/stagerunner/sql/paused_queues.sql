-- paused_queues: read-only; which of these queues are paused across all nodes.
SELECT name
FROM stagerunner.queues
WHERE paused
  AND name = ANY(%(queues)s::text[]);
