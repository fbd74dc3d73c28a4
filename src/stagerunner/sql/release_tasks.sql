-- release_tasks: running (claimed, never started) -> waiting, as if never claimed.
-- Guarded by owner and attempt. Either the listed tasks, or with %(unheld)s every running
-- task of the owner that is not listed: after a lost connection a claim may have
-- committed without its rows reaching us. (A cancel requested meanwhile wins: see the
-- tasks_cancel_wins trigger.)
-- A row another transaction holds locked (an application's cancel inside its own long
-- transaction, say) is skipped and comes back with its attempt (busy_attempt): the
-- caller releases it later, instead of the producer waiting for it. Released rows come
-- back with busy_attempt NULL.
-- Every step is linear in the rows whatever a generic plan estimates (see finish_tasks):
-- a listed row's attempt is found by its position in the arrays, the lock and the update
-- reach rows by primary key, and the guards are read from the row as locked.
WITH target AS (
    SELECT t.id, t.attempts
    FROM stagerunner.tasks AS t
    WHERE t.status = 'running'
      AND t.claimed_by = %(owner)s
      AND CASE WHEN %(unheld)s THEN NOT (t.id = ANY(%(ids)s::bigint[]))
               ELSE t.attempts = (%(attempts)s::integer[])[
                   array_position(%(ids)s::bigint[], t.id)] END
),
free AS (
    SELECT t.id, t.status AS row_status, t.claimed_by AS row_owner,
           t.attempts AS row_attempts, target.attempts AS expected
    FROM target
    JOIN stagerunner.tasks AS t ON t.id = target.id
    FOR UPDATE OF t SKIP LOCKED
),
released AS (
    UPDATE stagerunner.tasks AS t
    SET status = 'waiting',
        attempts = t.attempts - 1,
        claimed_by = NULL,
        claimed_at = NULL
    FROM free
    WHERE t.id = free.id
      AND free.row_status = 'running'
      AND free.row_owner = %(owner)s
      AND free.row_attempts = free.expected
    RETURNING t.id
)
SELECT id, NULL::integer AS busy_attempt FROM released
UNION ALL
SELECT id, attempts FROM target WHERE id NOT IN (SELECT id FROM free);
