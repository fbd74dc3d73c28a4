"""Deterministic fault points for tests.

STAGERUNNER_FAULT="stage:point" makes that stage SIGKILL itself whenever it reaches
the point; "stage:point@/path/marker" does so only once (the marker file records that
it fired), so the restarted stage carries on. Empty in production.
"""

from __future__ import annotations

import os
import signal


def hit(configured: str, stage: str, point: str) -> None:
    if not configured:
        return
    spec, _, marker = configured.partition("@")
    if spec != f"{stage}:{point}":
        return
    if marker:
        try:
            os.close(os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
        except FileExistsError:
            return
    os.kill(os.getpid(), signal.SIGKILL)
