-- release_tasks: running (claimed, never started) -> waiting, as if never claimed.
-- Guarded by owner and attempt. Either the listed tasks, or with %(unheld)s every running
-- task of the owner that is not listed: after a lost connection a claim may have
-- committed without its rows reaching us. (A cancel requested meanwhile wins: see the
-- tasks_cancel_wins trigger.)
WITH target AS (
    SELECT t.id
    FROM stagerunner.tasks AS t
    LEFT JOIN unnest(%(ids)s::bigint[], %(attempts)s::integer[]) AS r(id, attempt)
        ON r.id = t.id
    WHERE t.status = 'running'
      AND t.claimed_by = %(owner)s
      AND CASE WHEN %(unheld)s THEN r.id IS NULL ELSE r.attempt = t.attempts END
)
UPDATE stagerunner.tasks AS t
SET status = 'waiting',
    attempts = t.attempts - 1,
    claimed_by = NULL,
    claimed_at = NULL
FROM target
WHERE t.id = target.id
RETURNING t.id;
