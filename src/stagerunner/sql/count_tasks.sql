-- count_tasks: read-only; tasks per queue and status, and the oldest due waiting age.
SELECT queue, status::text AS status, count(*) AS n,
       extract(epoch FROM now() - min(run_at) FILTER (WHERE status = 'waiting' AND run_at <= now()))
           ::double precision AS oldest_waiting_s
FROM stagerunner.tasks
GROUP BY queue, status
ORDER BY queue, status;
