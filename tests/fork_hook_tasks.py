"""A task module that registers an at-fork hook when imported, as OpenTelemetry's batch
span exporter does to restart its thread in a child: its job children must run it."""

from __future__ import annotations

import os

from stagerunner import task

FORKED_IN: list[int] = []
os.register_at_fork(after_in_child=lambda: FORKED_IN.append(os.getpid()))


@task
def hook_ran() -> bool:
    return os.getpid() in FORKED_IN
