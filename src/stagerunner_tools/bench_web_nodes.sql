-- bench_web_nodes: three producer lifetimes (one dead) with what their heartbeats report,
-- and the last ticks of four periodic tasks, for the overview's and the cron page's reads.
WITH nodes AS (
    INSERT INTO stagerunner.nodes (owner, node, host, pid, queues, consumers, info, started_at, heartbeat_at,
                                   expires_at)
    SELECT 'worker-' || n || '/4242-5f0e', 'worker-' || n, 'worker-' || n || '.internal', 4242 + n,
           'default,mail,reports,webhooks', 8,
           jsonb_build_object('forkers_alive', 8, 'jobs_running', 5, 'jobs_started', 180000 + n,
                              'killed_at_deadline', 400 + n, 'overshoot_ms_p99', 3.1, 'lost', n),
           now() - interval '3 days', now() - n * n * interval '20 s',
           now() - n * n * interval '20 s' + interval '3 s'
    FROM generate_series(0, 2) AS g(n)
    RETURNING owner
)
INSERT INTO stagerunner.periodic (name, last_tick)
SELECT name, tick
FROM (VALUES ('app.tasks:nightly_report', date_trunc('day', now()) + interval '2 hours'),
             ('app.tasks:cleanup_sessions', date_trunc('hour', now())),
             ('app.tasks:fetch_rates', date_trunc('hour', now())),
             ('app.tasks:reindex', date_trunc('week', now()) - interval '1 day' + interval '3.5 hours'))
     AS p(name, tick)
CROSS JOIN (SELECT count(*) FROM nodes) AS made;
