-- count_live_tasks: read-only; waiting and running tasks per queue, and the age of the
-- oldest due waiting one. Reads only live rows (through the partial indexes on waiting
-- and running rows), never the finished ones, however many are kept.
SELECT queue, 'waiting' AS status, count(*) AS n,
       extract(epoch FROM now() - min(run_at) FILTER (WHERE run_at <= now()))
           ::double precision AS oldest_waiting_s
FROM stagerunner.tasks
WHERE status = 'waiting'
GROUP BY queue
UNION ALL
SELECT queue, 'running', count(*), NULL
FROM stagerunner.tasks
WHERE status = 'running'
GROUP BY queue
ORDER BY queue, status;
