"""Helpers shared by the test tiers: eventual assertions, process inspection, the CLI."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent


def descendants(root: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    fields = f.read().rsplit(")", 1)[1].split()
            except (OSError, IndexError):
                continue
            if fields[0] != "Z":
                children.setdefault(int(fields[1]), []).append(int(entry))
    found, stack = [], [root]
    while stack:
        for child in children.get(stack.pop(), []):
            found.append(child)
            stack.append(child)
    return found


def node_env(dsn: str, **overrides: Any) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("STAGERUNNER_") and k not in ("DATABASE_URL", "PGHOST", "PGDATABASE")}
    env.update({
        "STAGERUNNER_DATABASE_URL": dsn,
        "STAGERUNNER_TASK_MODULES": "tests.tasks",
        "STAGERUNNER_CONSUMERS": "2",
        "STAGERUNNER_POLL_INTERVAL": "0.5",
        "PYTHONPATH": str(ROOT) + os.pathsep + env.get("PYTHONPATH", ""),
    })
    env.update({f"STAGERUNNER_{k.upper()}": str(v) for k, v in overrides.items()})
    return env


def run_cli(*args: str, dsn: str, timeout: float = 30, **overrides: Any) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "stagerunner", *args], cwd=ROOT,
                          env=node_env(dsn, **overrides), capture_output=True, text=True,
                          timeout=timeout)


# Small helpers ----------------------------------------------------------------------------

def eventually(check: Callable[[], Any], timeout: float = 5.0, interval: float = 0.05) -> Any:
    """Retry `check` until it returns truthy (or stops raising AssertionError)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            result = check()
            if result:
                return result
            error: Exception | None = None
        except AssertionError as exc:
            error = exc
        if time.monotonic() > deadline:
            if error is not None:
                raise error
            raise AssertionError(f"condition not met within {timeout}s")
        time.sleep(interval)


def pid_alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False
