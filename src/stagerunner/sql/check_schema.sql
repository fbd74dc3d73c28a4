-- check_schema: read-only; the installed schema version, or no row if it is missing.
SELECT version
FROM stagerunner.schema_version
ORDER BY version DESC
LIMIT 1;
