-- web_runtimes: read-only; per task name, over the newest %(max_rows)s tasks that finished
-- in the last %(window_s)s seconds: outcomes, lost runs, runtime percentiles, how far the
-- timeouts overshot their deadline, and a histogram of runtime as a share of the deadline
-- (buckets 1-10 are tenths of it, 11 is at or past it: killed).
-- Runtime is the job child's (runtime_ms); rows written before it existed fall back to claim
-- to finish. The deadline falls back to the task's timeout, else %(job_timeout)s, capped.
WITH runs AS (
    SELECT name, status, lost,
           coalesce(runtime_ms, extract(epoch FROM finished_at - claimed_at) * 1000) AS ms,
           coalesce(deadline_s, least(coalesce(timeout_s, %(job_timeout)s), %(max_job_timeout)s))
               AS deadline_s
    FROM stagerunner.tasks
    WHERE finished_at >= now() - make_interval(secs => %(window_s)s)
    ORDER BY finished_at DESC
    LIMIT %(max_rows)s
),
bucketed AS (
    SELECT runs.*,
           CASE WHEN ms IS NULL OR status = 'cancelled' THEN NULL
                WHEN status = 'timeout' OR ms >= deadline_s * 1000 THEN 11
                ELSE least(width_bucket(ms / (deadline_s * 1000), 0, 1, 10), 10) END AS bucket
    FROM runs
)
SELECT name,
       count(*) AS runs,
       count(*) FILTER (WHERE status = 'success') AS success,
       count(*) FILTER (WHERE status = 'error') AS error,
       count(*) FILTER (WHERE status = 'timeout') AS timeout,
       count(*) FILTER (WHERE status = 'cancelled') AS cancelled,
       sum(lost) AS lost,
       count(*) FILTER (WHERE bucket BETWEEN 9 AND 10) AS near_deadline,
       percentile_cont(ARRAY[0.5, 0.95, 0.99]) WITHIN GROUP (ORDER BY ms) AS percentiles_ms,
       max(ms) AS max_ms,
       max(deadline_s) AS deadline_s,
       max(ms - deadline_s * 1000) FILTER (WHERE status = 'timeout') AS overshoot_max_ms,
       percentile_cont(0.99) WITHIN GROUP (ORDER BY ms - deadline_s * 1000)
           FILTER (WHERE status = 'timeout') AS overshoot_p99_ms,
       ARRAY[count(*) FILTER (WHERE bucket = 1), count(*) FILTER (WHERE bucket = 2),
             count(*) FILTER (WHERE bucket = 3), count(*) FILTER (WHERE bucket = 4),
             count(*) FILTER (WHERE bucket = 5), count(*) FILTER (WHERE bucket = 6),
             count(*) FILTER (WHERE bucket = 7), count(*) FILTER (WHERE bucket = 8),
             count(*) FILTER (WHERE bucket = 9), count(*) FILTER (WHERE bucket = 10),
             count(*) FILTER (WHERE bucket = 11)] AS histogram
FROM bucketed
GROUP BY name
ORDER BY name;
