"""The tasks of the chaos run (``bin/chaos``): its nodes list this module in
STAGERUNNER_TASK_MODULES. Each run records start / tick / end lines (``runs.mark``) in
the file named by SR_CHAOS_RECORD so the harness can check that no task ran twice at
once. Lean on purpose: consumers import it, and every job's fork pays for what they
imported.
"""

from __future__ import annotations

import os
import random
import signal

from stagerunner import task
from stagerunner.procs import stat_fields
from stagerunner_tools.runs import alive_for, mark

RECORD_ENV = "SR_CHAOS_RECORD"  # not STAGERUNNER_*: job children keep it in their environment
MIX = [("ok", 60), ("flaky", 20), ("sleepy", 8), ("crash", 8), ("killer", 1), ("slow", 5)]


def _record(key: str, event: str) -> None:
    path = os.environ.get(RECORD_ENV)
    if path:
        mark(path, key, event)


def _live(key: str, seconds: float) -> None:
    path = os.environ.get(RECORD_ENV)
    if path:
        alive_for(path, key, seconds)


@task
def ok(key: str) -> str:
    _record(key, "start")
    _live(key, random.uniform(0.0, 0.1))
    _record(key, "end")
    return key


@task(timeout=10)
def slow(key: str) -> str:
    """Alive for a second or so: a node frozen or rescued is likely to hold one."""
    _record(key, "start")
    _live(key, random.uniform(0.5, 1.5))
    _record(key, "end")
    return key


@task(max_attempts=3)
def flaky(key: str, p: float = 0.3) -> str:
    _record(key, "start")
    _live(key, random.uniform(0.0, 0.1))
    _record(key, "end")
    if random.random() < p:
        raise RuntimeError("chaos: flaky failure")
    return key


@task(timeout=0.3, max_attempts=2)
def sleepy(key: str, seconds: float = 1.0) -> str:
    _record(key, "start")
    _live(key, seconds)  # past its 0.3 s deadline: killed there
    _record(key, "end")
    return key


@task(max_attempts=2)
def crash(key: str) -> None:
    _record(key, "start")
    os._exit(1)


@task
def killer(key: str, p: float = 0.5) -> str:
    _record(key, "start")
    if random.random() < p:
        helper = stat_fields(os.getppid())  # our parent is the fork helper
        if helper:
            os.kill(int(helper[1]), signal.SIGKILL)  # its parent: the consumer
        _live(key, 5.0)  # dies with it (PR_SET_PDEATHSIG) long before this ends
    _record(key, "end")
    return key
