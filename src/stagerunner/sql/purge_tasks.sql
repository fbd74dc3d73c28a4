-- purge_tasks: finished (success | error | timeout | cancelled) older than %(older_s)s -> deleted,
-- at most %(batch)s rows per statement; failed ones (error | timeout) are kept until they
-- are older than %(failed_older_s)s instead (NULL: that kind is kept forever). With %(exclusive)s, only while holding the prune
-- lock, so that one node at a time prunes. (finished_at is set exactly on finished rows:
-- tasks_finished_when_terminal.)
WITH lock AS (
    SELECT NOT %(exclusive)s OR pg_try_advisory_xact_lock(hashtext('stagerunner.prune')) AS held
),
doomed AS (
    SELECT id
    FROM stagerunner.tasks
    WHERE finished_at < now() - make_interval(secs => least(%(older_s)s, %(failed_older_s)s))
      AND CASE WHEN status IN ('error', 'timeout')
               THEN finished_at < now() - make_interval(secs => %(failed_older_s)s)
               ELSE finished_at < now() - make_interval(secs => %(older_s)s) END
      AND (SELECT held FROM lock)
    ORDER BY finished_at
    LIMIT %(batch)s
    FOR UPDATE SKIP LOCKED
)
DELETE FROM stagerunner.tasks AS t
USING doomed
WHERE t.id = doomed.id
RETURNING t.id;
