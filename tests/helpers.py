"""Helpers shared by the test tiers: eventual assertions and the CLI. Processes, nodes,
databases and run records come from the support library, ``stagerunner_tools``."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Callable
from typing import Any

from stagerunner_tools.nodes import ROOT, node_env


def run_cli(*args: str, dsn: str, timeout: float = 30, **overrides: Any) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "stagerunner", *args], cwd=ROOT,
                          env=node_env(dsn, **overrides), capture_output=True, text=True,
                          timeout=timeout)


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


def assert_no_job_leftovers(node: Any, seen: dict[int, float] | None = None,
                            timeout: float = 10) -> None:
    """Job processes we saw are dead, and each consumer keeps only its fork helper with
    one idle spare child (``nodes.job_leftovers``)."""
    from stagerunner_tools.nodes import job_leftovers

    def clean() -> bool:
        problems = job_leftovers(node, dict(seen or {}))
        assert not problems, problems
        return True

    eventually(clean, timeout=timeout, interval=0.1)


def end_embedded_node(node: Any, data: Any) -> None:
    """Kill a node started on an embedded server in `data` (its session), that server's
    processes, and the directory."""
    import os
    import shutil
    import signal

    if node.poll() is None:
        os.killpg(node.pid, signal.SIGKILL)
        node.wait()
    subprocess.run(["pkill", "-f", str(data / "pgdata")], check=False)
    eventually(lambda: subprocess.run(["pgrep", "-f", str(data / "pgdata")],
                                      capture_output=True).returncode != 0, timeout=10)
    shutil.rmtree(data, ignore_errors=True)
