-- web_id_at: read-only; the first task id enqueued at or after %(at)s, found by bisecting
-- the primary key (about 20 index probes on a million rows). Ids grow with created_at, but
-- a row's created_at is its enqueuing transaction's start: callers widen the time by a
-- margin so that rows from transactions shorter than it are never skipped.
WITH RECURSIVE bisect AS (
    SELECT (SELECT min(id) FROM stagerunner.tasks) AS lo,
           (SELECT max(id) + 1 FROM stagerunner.tasks) AS hi
    UNION ALL
    SELECT CASE WHEN probe.id < b.hi AND probe.created_at < %(at)s THEN probe.id + 1
                ELSE b.lo END,
           CASE WHEN probe.id < b.hi AND probe.created_at < %(at)s THEN b.hi
                ELSE (b.lo + b.hi) / 2 END
    FROM bisect AS b
    LEFT JOIN LATERAL (
        SELECT t.id, t.created_at
        FROM stagerunner.tasks AS t
        WHERE t.id >= (b.lo + b.hi) / 2
        ORDER BY t.id
        LIMIT 1
    ) AS probe ON true
    WHERE b.lo < b.hi
)
SELECT min(lo) FILTER (WHERE lo >= hi) AS id
FROM bisect;
