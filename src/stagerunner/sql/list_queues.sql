-- list_queues: read-only; every queue that has live tasks or a pause state, with that
-- state and its waiting depth. Reads only live rows (through the partial indexes on
-- waiting and running rows), never the finished ones, however many are kept.
SELECT q.name, coalesce(p.paused, false) AS paused, coalesce(w.waiting, 0) AS waiting
FROM (SELECT queue AS name FROM stagerunner.tasks WHERE status = 'waiting'
      UNION SELECT queue FROM stagerunner.tasks WHERE status = 'running'
      UNION SELECT name FROM stagerunner.queues) AS q
LEFT JOIN stagerunner.queues AS p ON p.name = q.name
LEFT JOIN (SELECT queue, count(*) AS waiting FROM stagerunner.tasks
           WHERE status = 'waiting' GROUP BY queue) AS w ON w.queue = q.name
ORDER BY q.name;
