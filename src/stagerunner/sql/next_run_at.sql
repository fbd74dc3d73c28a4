-- next_run_at: read-only; seconds until the earliest scheduled task of these queues.
SELECT extract(epoch FROM min(run_at) - now())::double precision AS seconds
FROM stagerunner.tasks
WHERE status = 'waiting'
  AND queue = ANY(%(queues)s::text[])
  AND run_at > now();
