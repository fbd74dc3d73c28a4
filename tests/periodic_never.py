"""A task module whose cron expression can never fire (the node must refuse it at boot)."""

from stagerunner import task


@task(cron="0 0 30 2 *", name="tests.never")
def never() -> None:
    pass
