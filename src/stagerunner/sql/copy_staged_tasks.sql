COPY pg_temp.stagerunner_new_tasks
    (ord, name, args, queue, priority, max_attempts, timeout_s, delay_s, run_at)
FROM STDIN
