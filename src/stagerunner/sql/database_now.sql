-- database_now: read-only; the database's clock, which every node's decisions about
-- time (cron ticks, leases) go by, whatever its own clock says.
SELECT now() AS now;
