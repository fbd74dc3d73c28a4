-- insert_tasks: (new) -> waiting, one or many rows in one statement; the trigger sends one NOTIFY.
-- Ids come from the column's default, drawn row by row in input order (the scan of
-- unnest), so the ids of the rows without a uniqueness key, sorted, match those rows in
-- input order. (It names only the columns an enqueue-only role may write.) A row whose
-- unique_key is held by a waiting or running task (or by an earlier row of this
-- statement) is not inserted and not returned: the caller looks up its holder.
INSERT INTO stagerunner.tasks
    (name, args, queue, priority, max_attempts, timeout_s, run_at, unique_key)
SELECT name, args, queue, priority, max_attempts, timeout_s,
       coalesce(run_at, now() + make_interval(secs => coalesce(delay_s, 0))), unique_key
FROM unnest(
    %(names)s::text[], %(args)s::jsonb[], %(queues)s::text[], %(priorities)s::smallint[],
    %(max_attempts)s::integer[], %(timeouts)s::double precision[],
    %(delays)s::double precision[], %(run_ats)s::timestamptz[], %(unique_keys)s::text[]
) AS i(name, args, queue, priority, max_attempts, timeout_s, delay_s, run_at, unique_key)
ON CONFLICT (unique_key) WHERE unique_key IS NOT NULL AND status IN ('waiting', 'running')
DO NOTHING
RETURNING id, unique_key;
