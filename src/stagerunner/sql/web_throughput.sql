-- web_throughput: read-only; tasks that finished in each %(bucket_s)s-second bucket of the
-- last %(window_s)s seconds, by outcome (bucket 0 is the most recent).
SELECT floor(extract(epoch FROM now() - finished_at) / %(bucket_s)s)::integer AS ago,
       count(*) FILTER (WHERE status = 'success') AS success,
       count(*) FILTER (WHERE status IN ('error', 'timeout')) AS failed,
       count(*) FILTER (WHERE status = 'cancelled') AS cancelled
FROM stagerunner.tasks
WHERE finished_at >= now() - make_interval(secs => %(window_s)s)
GROUP BY 1
ORDER BY 1;
