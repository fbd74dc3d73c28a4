-- count_finished_since: read-only; tasks that finished in the last %(seconds)s seconds.
SELECT count(*) AS n
FROM stagerunner.tasks
WHERE finished_at >= now() - make_interval(secs => %(seconds)s);
