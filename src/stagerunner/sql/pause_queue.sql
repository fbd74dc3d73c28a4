-- pause_queue: a queue stops being claimed from, on every node (the trigger notifies them).
INSERT INTO stagerunner.queues AS q (name, paused, paused_at)
VALUES (%(queue)s, %(paused)s, CASE WHEN %(paused)s THEN now() END)
ON CONFLICT (name) DO UPDATE
SET paused = excluded.paused,
    paused_at = excluded.paused_at
RETURNING q.name, q.paused;
