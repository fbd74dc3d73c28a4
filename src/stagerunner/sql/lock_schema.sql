-- lock_schema: serialise concurrent installers (held until the transaction ends).
SELECT pg_advisory_xact_lock(hashtext('stagerunner.schema'));
