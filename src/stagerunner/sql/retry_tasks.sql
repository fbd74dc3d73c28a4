-- retry_tasks: error | timeout | cancelled -> waiting, now, with one more attempt allowed.
-- By ids (any finished task but a success), or every failed one (error, timeout) when
-- %(failed)s is true. The errors history is kept. A task whose unique_key is held by a
-- waiting or running task (or by another task retried in the same call) stays as it is
-- and comes back with retried = false, so one held key never stops the rest.
WITH candidates AS (
    SELECT t.id, t.unique_key,
           row_number() OVER (PARTITION BY t.unique_key ORDER BY t.id DESC) AS nth
    FROM stagerunner.tasks AS t
    WHERE t.finished_at IS NOT NULL
      AND t.status <> 'success'
      AND (t.id = ANY(%(ids)s::bigint[]) OR %(failed)s AND t.status IN ('error', 'timeout'))
      -- a counter at its limit (written by hand) can never be claimed again (see
      -- claim_tasks), and one more attempt allowed would overflow: not retried, and
      -- never a reason to refuse the rest (lost is never negative)
      AND t.attempts < 2147483647
),
allowed AS (
    SELECT c.id
    FROM candidates AS c
    WHERE c.unique_key IS NULL
       OR (c.nth = 1 AND NOT EXISTS (
               SELECT 1 FROM stagerunner.tasks AS h
               WHERE h.unique_key = c.unique_key AND h.status IN ('waiting', 'running')))
),
retried AS (
    UPDATE stagerunner.tasks AS t
    SET status = 'waiting',
        run_at = now(),
        max_attempts = greatest(t.max_attempts, t.attempts - t.lost + 1),
        result = NULL,
        finished_at = NULL,
        claimed_by = NULL,
        claimed_at = NULL,
        cancel_requested_at = NULL
    FROM allowed
    WHERE t.id = allowed.id
    RETURNING t.id
)
SELECT c.id, c.unique_key, r.id IS NOT NULL AS retried
FROM candidates AS c
LEFT JOIN retried AS r ON r.id = c.id
ORDER BY c.id;
