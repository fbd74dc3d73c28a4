-- web_queues: read-only; per queue: waiting (due and scheduled), running, the oldest due
-- wait, whether it is paused, and what finished in the last %(window_s)s seconds. Finished
-- rows are read through tasks_finished_at_idx, waiting and running ones through the partial
-- indexes on those statuses: the page never counts the whole table.
WITH waiting AS (
    SELECT queue,
           count(*) FILTER (WHERE run_at <= now()) AS due,
           count(*) FILTER (WHERE run_at > now()) AS scheduled,
           extract(epoch FROM now() - min(run_at) FILTER (WHERE run_at <= now()))
               ::double precision AS oldest_s
    FROM stagerunner.tasks
    WHERE status = 'waiting'
    GROUP BY queue
),
running AS (
    SELECT queue, count(*) AS running
    FROM stagerunner.tasks
    WHERE status = 'running'
    GROUP BY queue
),
finished AS (
    SELECT queue,
           count(*) FILTER (WHERE status = 'success') AS success,
           count(*) FILTER (WHERE status = 'error') AS error,
           count(*) FILTER (WHERE status = 'timeout') AS timeout,
           count(*) FILTER (WHERE status = 'cancelled') AS cancelled
    FROM stagerunner.tasks
    WHERE finished_at >= now() - make_interval(secs => %(window_s)s)
    GROUP BY queue
),
served AS (
    SELECT DISTINCT unnest(string_to_array(queues, ',')) AS queue
    FROM stagerunner.nodes
    WHERE expires_at > now()
),
names AS (
    SELECT queue FROM waiting
    UNION SELECT queue FROM running
    UNION SELECT queue FROM finished
    UNION SELECT queue FROM served
    UNION SELECT name FROM stagerunner.queues
)
SELECT n.queue, coalesce(q.paused, false) AS paused, q.paused_at,
       s.queue IS NOT NULL AS served,
       coalesce(w.due, 0) AS due, coalesce(w.scheduled, 0) AS scheduled, w.oldest_s,
       coalesce(r.running, 0) AS running,
       coalesce(f.success, 0) AS success, coalesce(f.error, 0) AS error,
       coalesce(f.timeout, 0) AS timeout, coalesce(f.cancelled, 0) AS cancelled
FROM names AS n
LEFT JOIN stagerunner.queues AS q ON q.name = n.queue
LEFT JOIN served AS s ON s.queue = n.queue
LEFT JOIN waiting AS w ON w.queue = n.queue
LEFT JOIN running AS r ON r.queue = n.queue
LEFT JOIN finished AS f ON f.queue = n.queue
ORDER BY n.queue;
