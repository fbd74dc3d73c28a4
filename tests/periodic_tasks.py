"""A periodic task, kept apart from tests.tasks so that other tests see no cron ticks."""

from stagerunner import task


@task(name="tests.every_minute", cron="* * * * *")
def every_minute() -> str:
    return "tick"
