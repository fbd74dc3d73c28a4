"""Tasks the benchmark (``bin/bench``) enqueues.

A node started by the bench lists this module in STAGERUNNER_TASK_MODULES. It imports
nothing beyond the stdlib and ``stagerunner.task``, so a consumer that loads it stays as
lean as one running an application's smallest task module.
"""

from __future__ import annotations

import time

from stagerunner import task


@task
def noop() -> None:
    """Does nothing: the drain and enqueue measurements time the runner, not the job."""
    return None


@task
def started_at() -> float:
    """The job child's wall clock when the job began (enqueue -> start latency)."""
    return time.time()


@task
def mark(path: str) -> None:
    """Writes the job child's wall clock when the job began to `path` (``bench_start``)."""
    with open(path, "w") as f:
        f.write(repr(time.time()))


@task
def sleep_forever() -> None:
    """Never returns: only the deadline ends it (deadline overshoot)."""
    while True:
        time.sleep(3600)
