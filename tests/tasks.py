"""Importable job functions for the tests (a spawned consumer imports them by name)."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time
from os import system  # noqa: F401  a re-export that must never become runnable
from pathlib import Path
from typing import Any

from stagerunner import task
from stagerunner.child import REPLY_HEADER
from stagerunner.procs import stat_fields
from stagerunner_tools.runs import alive_for, mark


@task
def ok() -> str:
    return "ok"


@task
def fork_probe() -> dict[str, Any]:
    """What a job child can tell about the fork that made it: its pid, its random numbers,
    and that it can install a signal handler, as a main thread can."""
    import random

    signal.signal(signal.SIGUSR2, signal.SIG_DFL)
    return {"random": random.random(), "pid": os.getpid()}


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
def boom_unencodable() -> None:
    """An error text UTF-8 cannot encode (a lone surrogate, as os.fsdecode gives back for a
    file name that is not UTF-8) and PostgreSQL's text cannot hold (a NUL)."""
    raise ValueError(f"no such file: {bytes([0x66, 0xff]).decode('utf-8', 'surrogateescape')}"
                     f" (nul: {chr(0)})")


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
def daemonize(pidfile: str) -> int:
    """Leave a daemon behind (double fork + setsid) and return: it is reparented to the
    nearest subreaper at once, while this job child lives on."""
    middle = os.fork()
    if middle == 0:
        os.setsid()
        if os.fork() == 0:
            Path(pidfile).write_text(str(os.getpid()))
            time.sleep(3600)
        os._exit(0)
    os.waitpid(middle, 0)
    for _ in range(200):
        if Path(pidfile).exists() and Path(pidfile).read_text():
            break
        time.sleep(0.01)
    return int(Path(pidfile).read_text())


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


def consumer_pid() -> int:
    """Our consumer: the parent of our parent (the consumer's fork helper)."""
    fields = stat_fields(os.getppid())
    assert fields is not None
    return int(fields[1])


@task
def kill_consumer() -> None:
    os.kill(consumer_pid(), signal.SIGKILL)
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



@task
def note(path: str, key: str, seconds: float = 0.0) -> str:
    """Append `key` to `path` when the job starts (order checks), then sleep."""
    with open(path, "a") as f:
        f.write(key + "\n")
    time.sleep(seconds)
    return key


# Tasks of the fault-injection tests (tests/fault) ---------------------------------------

@task
def record(path: str, key: str, seconds: float = 0.0, tick: float = 0.05) -> int:
    """Like record_run, but keyed by the caller's `key` (one per task), with a "tick" line
    every `tick` seconds while it runs: a run killed midway still shows how long it was
    alive, so a test can tell whether two runs of one task ever overlapped."""
    mark(path, key, "start")
    alive_for(path, key, seconds, tick)
    mark(path, key, "end")
    return os.getpid()


@task
def posonly(a: int, b: int, /) -> int:
    return a + b


@task
def misbehave(kind: str, pidfile: str, amount: int = 0) -> Any:
    """Write this job's pid (then any grandchild's) to `pidfile`, one a line, and misbehave."""
    def note(pid: int) -> None:
        with open(pidfile, "a") as f:
            f.write(f"{pid}\n")

    note(os.getpid())
    sleeper = [sys.executable, "-c", "import time; time.sleep(3600)"]
    if kind == "grandchildren":
        for _ in range(2):
            note(subprocess.Popen(sleeper).pid)
        time.sleep(3600)
    elif kind == "escaped":
        note(subprocess.Popen(sleeper, start_new_session=True).pid)
        time.sleep(3600)
    elif kind == "ignore_sigterm":
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        time.sleep(3600)
    elif kind == "blocked_in_c":
        import ctypes

        ctypes.CDLL(None).pause()
    elif kind == "segfault":
        import ctypes

        ctypes.string_at(0)  # a real SIGSEGV, not a signal sent by hand
    elif kind == "exit_zero":
        os._exit(0)
    elif kind == "memory":
        return len(bytearray(amount << 20))
    elif kind == "flood":
        for i in range(amount):
            print("flood out", i)
            print("flood err", i, file=sys.stderr)
        return amount
    elif kind == "huge":
        return "x" * amount
    elif kind == "unencodable":
        return {"a set": {1, 2, 3}}
    elif kind == "kill_consumer":
        os.kill(consumer_pid(), signal.SIGKILL)
        time.sleep(5)
    raise ValueError(f"unknown kind {kind!r}")


def _in_memory(markers: list[list[str]]) -> list[str]:
    """Which markers, each given in two halves (so that the whole one is in this process's
    memory only if it came from elsewhere), a readable mapping of ours holds."""
    halves = [(a.encode(), b.encode()) for a, b in markers]
    found = set()
    with open("/proc/self/maps") as maps, open("/proc/self/mem", "rb", buffering=0) as mem:
        for line in maps:
            span, perms, *_rest = line.split()
            if not perms.startswith("r") or line.rstrip().endswith(("[vvar]", "[vsyscall]")):
                continue
            start, end = (int(x, 16) for x in span.split("-"))
            try:
                mem.seek(start)
                chunk = mem.read(end - start)
            except (OSError, ValueError, OverflowError):
                continue
            for a, b in halves:
                at = chunk.find(a)
                while at >= 0:
                    if chunk[at + len(a):at + len(a) + len(b)] == b:
                        found.add(f"{a.decode()}{b.decode()}")
                        break
                    at = chunk.find(a, at + 1)
    return sorted(found)


@task
def inheritance(markers: list[list[str]] | None = None) -> dict[str, Any]:
    """What a job child inherited: socket fds, STAGERUNNER_* names in os.environ and in the
    environment block the kernel shows for it (/proc/self/environ), and which of `markers`
    its memory holds anywhere (a variable deleted from os.environ stays in the heap)."""
    targets = {}
    for fd in os.listdir("/proc/self/fd"):
        try:
            targets[fd] = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            pass
    with open("/proc/self/environ", "rb") as f:
        block = [e.decode(errors="replace") for e in f.read().split(b"\0") if e]
    credentials = ("STAGERUNNER_", "DATABASE_URL", "PG")
    return {
        "in_memory": _in_memory(markers or []),
        "fds": targets,
        "sockets": sorted(t for t in targets.values() if t.startswith("socket:")),
        "environ": sorted(k for k in os.environ if k.startswith(credentials)),
        "proc_environ": sorted(e.split("=", 1)[0] for e in block if e.startswith(credentials)),
    }


@task
def nan_result() -> float:
    return float("nan")


@task
def nul_result() -> str:
    return "a\x00b"


@task
def nul_error() -> None:
    raise ValueError("bad\x00byte")


@task
def fails_until_fixed(flag: str) -> str:
    """Fails until the file `flag` exists: a bug fixed between a run and its retry (tests/web)."""
    if not os.path.exists(flag):
        raise RuntimeError(f"the fix is not deployed yet: {flag} is missing")
    return "fixed"


# Jobs that abuse their result pipe or their error ------------------------------------------

def _result_pipe() -> int:
    """This job child's result pipe: its one write-only pipe beyond stdout and stderr."""
    import fcntl

    for name in os.listdir("/proc/self/fd"):
        fd = int(name)
        try:  # (listdir's own fd is in the list, and gone by now)
            if (fd > 2 and os.readlink(f"/proc/self/fd/{name}").startswith("pipe:")
                    and fcntl.fcntl(fd, fcntl.F_GETFL) & os.O_ACCMODE == os.O_WRONLY):
                return fd
        except OSError:
            continue
    raise RuntimeError("no result pipe")


@task
def close_result_pipe(seconds: float = 3.0) -> str:
    os.close(_result_pipe())
    time.sleep(seconds)  # alive, with nothing left to reply on
    return "unreachable"


@task
def garble_result_pipe(kind: str) -> None:
    fd = _result_pipe()

    def header(size: int, finished: float | None = None) -> bytes:  # as the child writes it
        return REPLY_HEADER.pack(size, time.monotonic() if finished is None else finished, 0)

    if kind == "huge_header":
        os.write(fd, header(0xfffffff0))
    elif kind == "not_json":
        os.write(fd, header(12) + b"{not json!!}")
    elif kind == "not_a_reply":
        os.write(fd, header(9) + b'{"a": 1}\n')
    elif kind == "no_finish_time":
        reply = b'["ok", "null"]'
        os.write(fd, header(len(reply), math.nan) + reply)
    time.sleep(3)


@task
def huge_error(megabytes: int) -> None:
    raise ValueError("start of the message " + "x" * (megabytes << 20) + " end of the message")


@task
def escape_twice(pidfile: str) -> None:
    """A descendant that escapes its group twice over: a child that calls setsid, whose own
    child calls setsid again (each one out of reach of the group kill that precedes it)."""
    sleeper = [sys.executable, "-c", "import time; time.sleep(3600)"]
    script = ("import os, subprocess, sys, time; os.setsid(); "
              f"p = subprocess.Popen({sleeper!r}, start_new_session=True); "
              f"open({pidfile!r}, 'a').write(f'{{os.getpid()}}\\n{{p.pid}}\\n'); time.sleep(3600)")
    subprocess.Popen([sys.executable, "-c", script])
    time.sleep(3600)


@task
def echo_big(size: int) -> str:
    return "y" * size


@task
def leave_thread(path: str) -> int:
    """Returns at once, leaving a (non-daemon) thread that appends to `path` forever."""
    import threading

    def beat() -> None:
        while True:
            with open(path, "a") as f:
                f.write(".")
            time.sleep(0.02)

    threading.Thread(target=beat).start()
    return os.getpid()


@task
def leave_process(pidfile: str) -> int:
    """Returns at once, leaving a child process it never waits for."""
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(3600)"])
    Path(pidfile).write_text(str(child.pid))
    return os.getpid()
