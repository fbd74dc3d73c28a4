-- find_unique_tasks: read-only; the waiting or running task holding each uniqueness key.
SELECT unique_key, id
FROM stagerunner.tasks
WHERE unique_key = ANY(%(keys)s::text[])
  AND status IN ('waiting', 'running');
