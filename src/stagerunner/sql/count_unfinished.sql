-- count_unfinished: read-only; tasks still waiting (due or scheduled) or running.
SELECT count(*) AS n
FROM stagerunner.tasks
WHERE status IN ('waiting', 'running');
