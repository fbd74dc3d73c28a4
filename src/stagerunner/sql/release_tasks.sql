-- release_tasks: running (claimed, never started) -> waiting, as if never claimed.
-- Guarded by owner and attempt. Either the listed tasks, or with %(unheld)s every running
-- task of the owner that is not listed: after a lost connection a claim may have
-- committed without its rows reaching us. (A cancel requested meanwhile wins: see the
-- tasks_cancel_wins trigger.)
-- A row another transaction holds locked (an application's cancel inside its own long
-- transaction, say) is skipped and comes back with its attempt (busy_attempt): the
-- caller releases it later, instead of the producer waiting for it. Released rows come
-- back with busy_attempt NULL.
WITH target AS (
    SELECT t.id, t.attempts
    FROM stagerunner.tasks AS t
    LEFT JOIN unnest(%(ids)s::bigint[], %(attempts)s::integer[]) AS r(id, attempt)
        ON r.id = t.id
    WHERE t.status = 'running'
      AND t.claimed_by = %(owner)s
      AND CASE WHEN %(unheld)s THEN r.id IS NULL ELSE r.attempt = t.attempts END
),
free AS (
    SELECT id FROM stagerunner.tasks WHERE id IN (SELECT id FROM target) FOR UPDATE SKIP LOCKED
),
released AS (
    UPDATE stagerunner.tasks AS t
    SET status = 'waiting',
        attempts = t.attempts - 1,
        claimed_by = NULL,
        claimed_at = NULL
    FROM target
    WHERE t.id = target.id
      AND t.id IN (SELECT id FROM free)
      AND t.status = 'running'
      AND t.claimed_by = %(owner)s
      AND t.attempts = target.attempts
    RETURNING t.id
)
SELECT id, NULL::integer AS busy_attempt FROM released
UNION ALL
SELECT id, attempts FROM target WHERE id NOT IN (SELECT id FROM free);
