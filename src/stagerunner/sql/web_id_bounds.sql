-- web_id_bounds: read-only; the lowest and highest task ids (two primary-key probes).
SELECT (SELECT min(id) FROM stagerunner.tasks) AS lo,
       (SELECT max(id) FROM stagerunner.tasks) AS hi;
