-- insert_task: (new) -> waiting, one row without a uniqueness key (the common enqueue).
INSERT INTO stagerunner.tasks (name, args, queue, priority, max_attempts, timeout_s, run_at)
VALUES (%(name)s, %(args)s::jsonb, %(queue)s, %(priority)s, %(max_attempts)s, %(timeout)s,
        coalesce(%(run_at)s::timestamptz, now() + make_interval(secs => coalesce(%(delay)s::double precision, 0))))
RETURNING id;
