-- set_lock_timeout: in this transaction, give up on a lock after %(timeout)s rather than
-- queue behind a long transaction (and make every other session queue behind us).
SELECT set_config('lock_timeout', %(timeout)s, true);
