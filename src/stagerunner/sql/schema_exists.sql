-- schema_exists: read-only; is the stagerunner.schema_version table there at all?
SELECT to_regclass('stagerunner.schema_version') IS NOT NULL AS present;
