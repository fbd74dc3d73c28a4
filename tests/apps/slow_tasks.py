"""A task whose own timeout is above the node's default cap (30 s): the node refuses to start."""

from stagerunner import task


@task(timeout=120)
def long_report() -> None:
    pass
