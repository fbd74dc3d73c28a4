"""Periodic tasks named like the benchmark's rows, so the screenshots' cron page has entries."""

from stagerunner import task


@task(name="app.tasks:nightly_report", cron="0 2 * * *", queue="reports")
def nightly_report() -> None: ...


@task(name="app.tasks:cleanup_sessions", cron="*/15 * * * *", queue="mail")
def cleanup_sessions() -> None: ...


@task(name="app.tasks:fetch_rates", cron="@hourly", queue="webhooks")
def fetch_rates() -> None: ...


@task(name="app.tasks:reindex", cron="30 3 * * 0", queue="reports")
def reindex() -> None: ...
