-- list_queues: read-only; every known queue with its pause state and waiting depth.
SELECT q.name, coalesce(p.paused, false) AS paused, coalesce(w.waiting, 0) AS waiting
FROM (SELECT DISTINCT queue AS name FROM stagerunner.tasks
      UNION SELECT name FROM stagerunner.queues) AS q
LEFT JOIN stagerunner.queues AS p ON p.name = q.name
LEFT JOIN (SELECT queue, count(*) AS waiting FROM stagerunner.tasks
           WHERE status = 'waiting' GROUP BY queue) AS w ON w.queue = q.name
ORDER BY q.name;
