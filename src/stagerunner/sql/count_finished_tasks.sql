-- count_finished_tasks: read-only; finished tasks per status. Exact while the table holds
-- fewer than %(exact_below)s rows; above that, the planner's estimate (the status column's
-- statistics from the last ANALYZE times the table's row estimate), so that a scrape or a
-- `status` never scans millions of finished rows. `exact` says which one it is.
WITH size AS (
    SELECT greatest(reltuples, 0)::bigint AS estimate
    FROM pg_class
    WHERE oid = 'stagerunner.tasks'::regclass
),
stats AS (
    SELECT v.status, v.freq
    FROM pg_stats AS s,
         unnest(s.most_common_vals::text::text[], s.most_common_freqs) AS v(status, freq)
    WHERE s.schemaname = 'stagerunner' AND s.tablename = 'tasks' AND s.attname = 'status'
)
SELECT status::text AS status, count(*)::bigint AS n, true AS exact
FROM stagerunner.tasks
WHERE finished_at IS NOT NULL
  AND (SELECT estimate FROM size) < %(exact_below)s
GROUP BY status
UNION ALL
SELECT stats.status, round(stats.freq * size.estimate)::bigint, false
FROM stats, size
WHERE size.estimate >= %(exact_below)s
  AND stats.status NOT IN ('waiting', 'running')
ORDER BY status;
