-- enqueue_periodic: (new) -> waiting for one cron tick, at most once across all nodes:
-- only the node that advances periodic.last_tick to this tick inserts the task.
WITH won AS (
    INSERT INTO stagerunner.periodic AS p (name, last_tick)
    VALUES (%(name)s, %(tick)s)
    ON CONFLICT (name) DO UPDATE
    SET last_tick = excluded.last_tick
    WHERE p.last_tick < excluded.last_tick
    RETURNING p.name
)
INSERT INTO stagerunner.tasks (name, args, queue, priority, max_attempts, timeout_s, run_at)
SELECT %(name)s, '[]', %(queue)s, %(priority)s, %(max_attempts)s, %(timeout)s, %(tick)s
FROM won
RETURNING id;
