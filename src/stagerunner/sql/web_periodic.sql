-- web_periodic: read-only; each periodic task's last enqueued tick, and the newest task of
-- that name among the newest %(scan)s ids (one bounded scan for all of them: a monthly
-- task's last run may be older than that).
WITH recent AS (
    SELECT DISTINCT ON (t.name) t.name, t.id, t.status::text AS status, t.finished_at
    FROM stagerunner.tasks AS t
    WHERE t.id > (SELECT max(id) FROM stagerunner.tasks) - %(scan)s
      AND t.name IN (SELECT name FROM stagerunner.periodic)
    ORDER BY t.name, t.id DESC
)
SELECT p.name, p.last_tick, r.id AS last_id, r.status AS last_status,
       r.finished_at AS last_finished_at
FROM stagerunner.periodic AS p
LEFT JOIN recent AS r ON r.name = p.name
ORDER BY p.name;
