-- max_task_id: read-only; the newest task id (0 when there is none): a test's baseline.
SELECT coalesce(max(id), 0) AS id
FROM stagerunner.tasks;
