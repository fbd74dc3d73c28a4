COPY pg_temp.stagerunner_staged_tasks
    (ord, name, args, queue, priority, max_attempts, timeout_s, delay_s, run_at)
FROM STDIN
