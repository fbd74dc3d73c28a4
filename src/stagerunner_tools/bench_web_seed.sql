-- bench_web_seed: %(rows)s tasks enqueued over the last 7 days in a realistic mix (ids grow
-- with created_at, as they do in a live table). Deterministic: every "random" draw is a hash.
-- 92%% success, 3%% error, 1.5%% timeout, 0.5%% cancelled, 1%% waiting scheduled up to a day
-- ahead, the rest success after a retry; the newest %(backlog)s are a due backlog, 40 of them running.
INSERT INTO stagerunner.tasks
    (name, args, queue, priority, status, attempts, lost, max_attempts, timeout_s, run_at,
     result, last_error, errors, claimed_by, claimed_at, consumer, deadline_s, runtime_ms,
     finished_at, created_at)
SELECT 'app.tasks:' || (ARRAY['send_email', 'render_invoice', 'sync_crm', 'resize_image',
                              'charge_card', 'push_notification', 'nightly_report', 'reindex',
                              'webhook_deliver', 'export_csv', 'geocode', 'thumbnail',
                              'audit_log', 'cleanup_sessions', 'score_lead', 'fetch_rates'])[k + 1],
       jsonb_build_object('user_id', i %% 100000, 'email', 'user' || (i %% 100000) || '@example.com',
                          'request_id', md5(i::text), 'attempt_note', 'order ' || (i %% 7919)),
       (ARRAY['default', 'mail', 'reports', 'webhooks'])[k %% 4 + 1],
       0, status, attempts, 0, 3, NULL,
       CASE WHEN status = 'waiting' AND i <= %(rows)s - %(backlog)s THEN now() + (i %% 86400) * interval '1 s'
            ELSE created END,
       result, last_error, errors,
       CASE WHEN status <> 'waiting' THEN 'worker-' || (i %% 3) || '/4242-5f0e' END,
       CASE WHEN status <> 'waiting' THEN created + interval '40 ms' END,
       CASE WHEN status <> 'waiting' THEN i %% 8 END,
       CASE WHEN status <> 'waiting' THEN deadline END,
       CASE WHEN status IN ('waiting', 'running') THEN NULL ELSE runtime END,
       CASE WHEN status IN ('waiting', 'running') THEN NULL
            ELSE created + interval '40 ms' + runtime * interval '1 ms' END,
       created
FROM (
    SELECT i, k, created, deadline, status,
           CASE WHEN status = 'timeout' THEN deadline * 1000 + 1 + r3 * 6
                ELSE least(deadline * 1000 * 0.97, exp(r2 * 5 + k * 0.2) + 2) END AS runtime,
           CASE WHEN status IN ('error', 'timeout') THEN 3
                WHEN status = 'waiting' THEN 0
                WHEN status = 'success' AND r1 >= 0.98 THEN 2 ELSE 1 END AS attempts,
           CASE WHEN status = 'success' THEN jsonb_build_object('ok', true, 'ms', i %% 977) END AS result,
           CASE WHEN status = 'error' THEN tb
                WHEN status = 'timeout' THEN 'killed at its deadline of ' || deadline || ' s' END AS last_error,
           CASE WHEN status IN ('error', 'timeout') THEN jsonb_build_array(
                    jsonb_build_object('attempt', 1, 'status', status, 'at', created, 'runtime_ms', 12.5,
                                       'error', CASE WHEN status = 'error' THEN tb ELSE 'killed at its deadline' END),
                    jsonb_build_object('attempt', 2, 'status', status, 'at', created, 'runtime_ms', 14.5,
                                       'error', CASE WHEN status = 'error' THEN tb ELSE 'killed at its deadline' END))
                WHEN status = 'success' AND r1 >= 0.98 THEN jsonb_build_array(
                    jsonb_build_object('attempt', 1, 'status', 'error', 'at', created, 'runtime_ms', 9.5,
                                       'error', tb))
                ELSE '[]'::jsonb END AS errors
    FROM (
        SELECT i, k, r1, r2, r3, created,
               (ARRAY[1.0, 5.0, 30.0])[k %% 3 + 1]::double precision AS deadline,
               CASE WHEN i > %(rows)s - 40 THEN 'running'
                    WHEN i > %(rows)s - %(backlog)s THEN 'waiting'
                    WHEN r1 < 0.92 THEN 'success'
                    WHEN r1 < 0.95 THEN 'error'
                    WHEN r1 < 0.965 THEN 'timeout'
                    WHEN r1 < 0.97 THEN 'cancelled'
                    WHEN r1 < 0.98 THEN 'waiting'
                    ELSE 'success' END::stagerunner.task_status AS status,
               'Traceback (most recent call last):' || E'\n' ||
               '  File "/srv/app/.venv/lib/python3.11/site-packages/stagerunner/child.py", line 81, in run_job' || E'\n' ||
               '    result = spec.func(*args, **kwargs)' || E'\n' ||
               '  File "/srv/app/app/tasks.py", line ' || (40 + k * 13) || ', in task_' || k || E'\n' ||
               '    response = client.post(url, json=payload, timeout=10)' || E'\n' ||
               '  File "/srv/app/.venv/lib/python3.11/site-packages/httpx/_client.py", line 1145, in post' || E'\n' ||
               '    return self.request("POST", url, json=json, timeout=timeout)' || E'\n' ||
               'httpx.ConnectError: upstream ' || md5((i * 7)::text) || ' refused the connection' AS tb
        FROM (
            SELECT i,
                   (abs(hashtext(i::text || 'k')) %% 1000) / 1000.0 AS rk,
                   (abs(hashtext(i::text || 'a')) %% 100000) / 100000.0 AS r1,
                   (abs(hashtext(i::text || 'b')) %% 100000) / 100000.0 AS r2,
                   (abs(hashtext(i::text || 'c')) %% 100000) / 100000.0 AS r3,
                   now() - (%(rows)s - i) * interval '604800 ms' * (1000.0 / %(rows)s) AS created
            FROM generate_series(1, %(rows)s) AS g(i)
        ) AS draws
        CROSS JOIN LATERAL (SELECT floor(rk * rk * 16)::int AS k) AS skew
    ) AS drawn
) AS rows;
