-- web_task: read-only; one task with everything the detail page shows, and the node
-- (producer lifetime) that claimed it if it is still on record.
SELECT t.id, t.name, t.args, t.queue, t.priority, t.status::text AS status, t.attempts, t.lost,
       t.max_attempts, t.timeout_s, t.run_at, t.unique_key, t.result, t.last_error, t.errors,
       t.claimed_by, t.claimed_at, t.consumer, t.deadline_s, t.runtime_ms, t.finished_at,
       t.created_at, t.cancel_requested_at,
       extract(epoch FROM t.claimed_at - t.run_at)::double precision AS wait_s,
       n.node, n.host, n.pid, n.consumers AS node_consumers, n.info AS node_info,
       extract(epoch FROM now() - n.heartbeat_at)::double precision AS node_beat_age_s,
       n.expires_at > now() AS node_alive
FROM stagerunner.tasks AS t
LEFT JOIN stagerunner.nodes AS n ON n.owner = t.claimed_by
WHERE t.id = %(id)s;
