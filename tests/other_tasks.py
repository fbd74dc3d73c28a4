"""A task module that is NOT listed in STAGERUNNER_TASK_MODULES in the tests."""

from stagerunner import task


@task
def outside() -> str:
    return "should never run"
