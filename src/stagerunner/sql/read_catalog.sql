-- read_catalog: read-only; every task some node published (small: one row per task).
SELECT name, queue, priority, max_attempts, timeout_s
FROM stagerunner.task_catalog;
