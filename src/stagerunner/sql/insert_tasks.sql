-- insert_tasks: (new) -> waiting, many rows in one statement; the trigger sends one NOTIFY.
-- Ids are drawn up front so each input row learns its id. A row whose unique_key is held
-- by a waiting or running task (or by an earlier row of this batch) is not inserted and
-- resolves to that task's id. If a concurrent enqueue wins the race for a key, the row
-- comes back with lost_race = true and an id that was never used: find_unique_tasks resolves it.
WITH input AS (
    SELECT i.*, nextval(pg_get_serial_sequence('stagerunner.tasks', 'id')) AS new_id
    FROM unnest(
        %(names)s::text[], %(args)s::jsonb[], %(queues)s::text[], %(priorities)s::smallint[],
        %(max_attempts)s::integer[], %(timeouts)s::double precision[],
        %(delays)s::double precision[], %(run_ats)s::timestamptz[], %(unique_keys)s::text[]
    ) WITH ORDINALITY AS i(name, args, queue, priority, max_attempts, timeout_s, delay_s,
                           run_at, unique_key, ord)
),
resolved AS (
    SELECT input.*,
           CASE WHEN input.unique_key IS NULL THEN input.new_id
                ELSE coalesce(existing.id, first_value(input.new_id)
                              OVER (PARTITION BY input.unique_key ORDER BY input.ord))
           END AS id
    FROM input
    LEFT JOIN stagerunner.tasks AS existing
        ON existing.unique_key = input.unique_key
       AND existing.status IN ('waiting', 'running')
),
inserted AS (
    INSERT INTO stagerunner.tasks
        (id, name, args, queue, priority, max_attempts, timeout_s, run_at, unique_key)
    SELECT new_id, name, args, queue, priority, max_attempts, timeout_s,
           coalesce(run_at, now() + make_interval(secs => coalesce(delay_s, 0))), unique_key
    FROM resolved
    WHERE id = new_id
    ORDER BY ord
    ON CONFLICT (unique_key) WHERE unique_key IS NOT NULL AND status IN ('waiting', 'running')
    DO NOTHING
    RETURNING id
)
SELECT r.id, r.unique_key,
       (r.id = r.new_id AND i.id IS NOT NULL) AS created,
       (r.id = r.new_id AND i.id IS NULL) AS lost_race
FROM resolved AS r
LEFT JOIN inserted AS i ON i.id = r.id
ORDER BY r.ord;
