"""Example tasks for the README's quickstart: STAGERUNNER_TASK_MODULES=stagerunner.examples."""

from __future__ import annotations

import time

from stagerunner import task


@task
def greet(name: str) -> str:
    print(f"hello, {name}")  # job output goes to the runner's stdout, like the tutorial's IO.puts
    return f"hello, {name}"


@task
def add(a: float, b: float) -> float:
    return a + b


@task(max_attempts=2)
def fail(message: str = "it failed") -> None:
    raise RuntimeError(message)


@task
def sleep(seconds: float) -> float:
    """Sleeps; anything past the deadline (1 s by default) ends in timeout."""
    time.sleep(seconds)
    return seconds


@task
def now() -> float:
    """Returns the wall-clock time at which the job started (latency measurements)."""
    return time.time()
