-- web_session: read-only; the dashboard's connections name themselves and give up on any
-- statement after %(timeout_ms)s ms, so a slow page never holds the database for long.
SELECT set_config('statement_timeout', %(timeout_ms)s::text, false),
       set_config('application_name', 'stagerunner-web', false);
