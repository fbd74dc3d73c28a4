-- publish_catalog: a node's registered tasks -> the task catalog (upsert), so that
-- enqueue by name elsewhere gets each task's own queue, priority, attempts and timeout.
INSERT INTO stagerunner.task_catalog AS c
    (name, queue, priority, max_attempts, timeout_s, is_async, node, published_at)
SELECT name, queue, priority, max_attempts, timeout_s, is_async, %(node)s, now()
FROM unnest(
    %(names)s::text[], %(queues)s::text[], %(priorities)s::smallint[],
    %(max_attempts)s::integer[], %(timeouts)s::double precision[], %(asyncs)s::boolean[]
) AS i(name, queue, priority, max_attempts, timeout_s, is_async)
ON CONFLICT (name) DO UPDATE
SET queue = excluded.queue,
    priority = excluded.priority,
    max_attempts = excluded.max_attempts,
    timeout_s = excluded.timeout_s,
    is_async = excluded.is_async,
    node = excluded.node,
    published_at = excluded.published_at;
