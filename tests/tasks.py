"""Importable job functions for the tests (a spawned consumer imports them by name)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from stagerunner import task
from os import system  # noqa: F401  a re-export that must never become runnable


@task
def ok() -> str:
    return "ok"


@task
def echo(*args: Any, **kwargs: Any) -> Any:
    return {"args": list(args), "kwargs": kwargs}


@task
def add(a: int, b: int) -> int:
    return a + b


@task
def boom(message: str = "boom") -> None:
    raise ValueError(message)


@task
def sleep_for(seconds: float) -> float:
    time.sleep(seconds)
    return seconds


@task
def sleep_forever() -> None:
    while True:
        time.sleep(3600)


@task
def record_run(path: str, seconds: float = 0.0) -> int:
    """Append start/end of this run to `path` (JSON lines) so tests can check overlaps."""
    start = time.time()
    with open(path, "a") as f:
        f.write(json.dumps({"pid": os.getpid(), "event": "start", "t": start}) + "\n")
    time.sleep(seconds)
    with open(path, "a") as f:
        f.write(json.dumps({"pid": os.getpid(), "event": "end", "t": time.time()}) + "\n")
    return os.getpid()


@task
def spawn_grandchild_then_sleep(pidfile: str) -> None:
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(3600)"])
    Path(pidfile).write_text(str(child.pid))
    time.sleep(3600)


@task
def escape_group_then_sleep(pidfile: str) -> None:
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(3600)"],
                             start_new_session=True)
    Path(pidfile).write_text(str(child.pid))
    time.sleep(3600)


@task
def ignore_sigterm() -> None:
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    time.sleep(3600)


@task
def exit_zero() -> None:
    os._exit(0)


@task
def exit_nonzero() -> None:
    os._exit(3)


@task
def abort_self() -> None:
    os.kill(os.getpid(), signal.SIGSEGV)


@task
def unencodable_result() -> Any:
    return {1, 2, 3}


@task
def huge_result(size: int) -> str:
    return "x" * size


@task
def flood_output(lines: int) -> int:
    for i in range(lines):
        print("flood", i)
        print("flood", i, file=sys.stderr)
    return lines


@task
def eat_memory(mb: int) -> int:
    blob = bytearray(mb << 20)
    return len(blob)


@task
def env_has(name: str) -> bool:
    return name in os.environ


@task
def open_fds() -> list[int]:
    return sorted(int(fd) for fd in os.listdir("/proc/self/fd"))


@task
def kill_consumer() -> None:
    os.kill(os.getppid(), signal.SIGKILL)
    time.sleep(5)


@task(name="custom.name", max_attempts=5, timeout=0.5, priority=3)
def custom() -> str:
    return "custom"


def _private() -> str:  # not a task: a row naming it must end in error
    return "private"


def undecorated() -> str:  # not a task either
    return "undecorated"


@task
def blocked_in_c() -> None:
    import ctypes

    libc = ctypes.CDLL(None)
    libc.pause()  # blocks in C, ignoring Python signal handling

