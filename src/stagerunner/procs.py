"""Process helpers that every stage shares: the process library that starts stages, the
prctl knobs, killing process groups and sessions, reaping, and
reading a process's children from /proc. Stdlib only: consumers and fork helpers import
it, and what they import is paid on every fork.

Stages are started with the stdlib ``multiprocessing`` (the default) or ``multiprocess``
(STAGERUNNER_PROCESS_LIBRARY=multiprocess): consumers are forked by the library's fork
server (``stageserver``), a restarted producer is spawned, a node's first producer is
forked (see supervisor). A consumer does not carry the supervisor's pydantic and psycopg
pages into every fork of a job child, and never inherits a database socket. On the
pipes every message is bytes (``send_bytes``), so the per-job path is the same whichever
library started the stage; why the stdlib is the default is measured by ``bin/bench``
(see the README).
"""

from __future__ import annotations

import ctypes
import importlib
import os
import select
import signal
import socket
import struct
import time
from collections.abc import Callable, Iterable
from multiprocessing.connection import Connection, wait
from multiprocessing.reduction import recv_handle, send_handle
from typing import Any

__all__ = ["Connection", "context", "recv_handle", "send_handle", "wait"]

_PR_SET_PDEATHSIG = 1
_SIGKILL = int(signal.SIGKILL)
_PR_SET_NAME = 15
_PR_SET_CHILD_SUBREAPER = 36
_PR_SET_DUMPABLE = 4
_libc: Any = None
_prctl_call: Any = None  # libc's prctl, looked up once


def context(library: str = "multiprocessing", method: str = "spawn") -> Any:
    """The chosen library's context: spawn, forkserver (consumers) or fork (a node's
    first producer)."""
    if library not in ("multiprocess", "multiprocessing"):
        raise ValueError(f"unknown process library {library!r}")
    return importlib.import_module(library).get_context(method)


def wait_rw(readers: list[Any], writers: list[Any], timeout: float | None
            ) -> tuple[list[Any], list[Any]]:
    """Like ``wait`` (objects with ``fileno()``, or fds), also for writability: (readable,
    writable). A hang-up or an error counts as readable, so its reader sees the EOF."""
    poller = select.poll()
    by_fd: dict[int, Any] = {}
    for source in readers:
        fd = source if isinstance(source, int) else source.fileno()
        by_fd[fd] = source
        poller.register(fd, select.POLLIN)
    out: dict[int, Any] = {}
    for sink in writers:
        fd = sink.fileno()
        out[fd] = sink
        poller.register(fd, select.POLLOUT | (select.POLLIN if fd in by_fd else 0))
    events = poller.poll(None if timeout is None else max(0, int(timeout * 1000 + 0.999)))
    readable, writable = [], []
    for fd, event in events:
        if fd in by_fd and event & (select.POLLIN | select.POLLHUP | select.POLLERR):
            readable.append(by_fd[fd])
        if fd in out and event & (select.POLLOUT | select.POLLERR):
            writable.append(out[fd])
    return readable, writable


class Outbox:
    """Messages to one end of a stage pipe, written without ever blocking: what the pipe
    cannot take now waits here, and the owner's loop calls ``flush`` when the pipe is
    writable. Two stages that both send large messages at once (a batch with big
    arguments one way, a big result the other) can then never deadlock.

    The framing is ``multiprocessing.connection``'s (a 4-byte big-endian length), so the
    other end reads with ``Connection.recv_bytes``.
    """

    def __init__(self, conn: Any) -> None:
        # a second handle on the same socket: MSG_DONTWAIT per send, while reads through
        # the Connection stay blocking
        self.sock = socket.socket(fileno=os.dup(conn.fileno()))
        self.pending = bytearray()

    def send(self, payload: bytes) -> None:
        """Queue one message and write what the pipe takes now; OSError if it is broken."""
        self.pending += struct.pack("!i", len(payload)) + payload
        self.flush()

    def flush(self) -> None:
        while self.pending:
            try:
                sent = self.sock.send(self.pending, socket.MSG_DONTWAIT)
            except BlockingIOError:
                return
            del self.pending[:sent]

    def fileno(self) -> int:
        return self.sock.fileno()

    def close(self) -> None:
        self.sock.close()


def exit_with(run: Callable[[], int], log: Any, stage: str) -> None:
    """The top of a stage process: run it, log a crash (the one catch-all of the stage),
    and leave with its exit code without running the library's exit handlers."""
    try:
        code = run()
    except Exception:
        log.exception(f"{stage} crashed", extra={"event": f"{stage}.crashed"})
        code = 1
    os._exit(code)


# A kill the kernel delivers --------------------------------------------------------------

CLOCK_BOOTTIME = 7  # counts through suspend, like the database's clock
_TIMER_ABSTIME = 1
_SIGEV_SIGNAL = 0


def boottime() -> float:
    """Seconds on CLOCK_BOOTTIME: one clock for every process of the machine."""
    return time.clock_gettime(CLOCK_BOOTTIME)


class _SigEvent(ctypes.Structure):
    _fields_ = [("value", ctypes.c_void_p), ("signo", ctypes.c_int), ("notify", ctypes.c_int),
                ("rest", ctypes.c_byte * 48)]


class _TimeSpec(ctypes.Structure):
    _fields_ = [("sec", ctypes.c_long), ("nsec", ctypes.c_long)]


class _ITimerSpec(ctypes.Structure):
    _fields_ = [("interval", _TimeSpec), ("value", _TimeSpec)]


class KillTimer:
    """A POSIX timer that SIGKILLs this process at an absolute CLOCK_BOOTTIME time. The
    kernel fires it whether or not this process is scheduled, stopped or frozen: it is the
    backstop that no late Python loop can stretch. One per process; `arm(0)` disarms."""

    def __init__(self) -> None:
        _load_libc()
        event = _SigEvent(signo=signal.SIGKILL, notify=_SIGEV_SIGNAL)
        self.timer = ctypes.c_void_p()
        if _libc.timer_create(CLOCK_BOOTTIME, ctypes.byref(event), ctypes.byref(self.timer)):
            raise OSError(ctypes.get_errno(), "timer_create failed")
        self.at = 0.0

    def arm(self, at: float) -> None:
        """SIGKILL at `at` (CLOCK_BOOTTIME seconds); 0 disarms. A time already past kills now."""
        if at == self.at:
            return
        spec = _ITimerSpec()
        if at > 0:
            at = max(at, 1e-9)
            spec.value = _TimeSpec(int(at), int((at % 1) * 1e9) or 1)
        if _libc.timer_settime(self.timer, _TIMER_ABSTIME, ctypes.byref(spec), None):
            raise OSError(ctypes.get_errno(), "timer_settime failed")
        self.at = at


# prctl ------------------------------------------------------------------------------

def _load_libc() -> None:
    global _libc, _prctl_call
    if _libc is None:
        _libc = ctypes.CDLL(None, use_errno=True)
        _prctl_call = _libc.prctl


def _prctl(option: int, value: int | bytes) -> None:
    _load_libc()
    _prctl_call(option, value, 0, 0, 0)


def set_comm(name: bytes) -> None:
    """The name `top` and `ps -o comm` show (at most 15 bytes); cheap, unlike setproctitle.
    Called in every job child, so directly and with `name` encoded by the forking process
    (each frame and conversion there writes pages the child shares with its parent)."""
    if _libc is None:
        _load_libc()
    _prctl_call(_PR_SET_NAME, name, 0, 0, 0)


def become_subreaper() -> None:
    """Orphaned descendants get reparented to us instead of init, so we can kill them."""
    _prctl(_PR_SET_CHILD_SUBREAPER, 1)


def keep_memory_private() -> None:
    """Close this process's memory (/proc/PID/mem, environ, ptrace) to the other processes
    of its user: the supervisor and the producer hold the DSN, and a job runs as the same
    user. (Also no core dump. Root, or CAP_SYS_PTRACE, still reads it.)"""
    _prctl(_PR_SET_DUMPABLE, 0)


def lead_private_session(expected_parent: int) -> None:
    """A stage's start (the producer's): its own session, death with its parent, its
    memory private (``keep_memory_private``)."""
    os.setsid()
    die_with_parent(expected_parent)
    keep_memory_private()


def die_with_parent(expected_parent: int) -> None:
    """SIGKILL this process when its parent dies (and close the race if it already has).
    Called in every job child: the call is direct, with a plain int, because each Python
    frame and enum lookup there writes pages the child shares with the fork helper."""
    if _libc is None:
        _load_libc()
    _prctl_call(_PR_SET_PDEATHSIG, _SIGKILL, 0, 0, 0)
    if os.getppid() != expected_parent:
        os._exit(1)


def close_fd(fd: int) -> None:
    """Close `fd` if it is one (-1 is "already closed"); errors are of no interest."""
    if fd >= 0:
        try:
            os.close(fd)
        except OSError:
            pass


# Killing and reaping -------------------------------------------------------------------

def sigkill_group(pid: int) -> None:
    """SIGKILL the process group led by `pid`, then `pid` itself (in case it died or was
    killed before it could call setpgrp)."""
    for kill in (os.killpg, os.kill):
        try:
            kill(pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass


def kill_and_reap(children: Iterable[int], keep: set[int]) -> int:
    """SIGKILL each child of ours (and its group) that is not in `keep`, and reap it.
    How many were killed."""
    killed = 0
    for pid in children:
        if pid in keep:
            continue
        sigkill_group(pid)
        killed += 1
        try:
            os.waitpid(pid, 0)
        except ChildProcessError:
            pass
    return killed


STRAY_ROUNDS = 64  # a descendant that escaped N times needs N rounds; bound a fork bomb


def kill_strays(keep: set[int], children: Callable[[], list[int]] | None = None) -> int:
    """Kill and reap every child of ours except `keep`, round after round: a stray's own
    escaped children (a setsid inside a setsid) are reparented to us, a subreaper, only
    once it is dead and reaped, so each round may find new ones. How many were killed."""
    read = children or (lambda: children_of(os.getpid()))
    killed = 0
    for _ in range(STRAY_ROUNDS):
        found = kill_and_reap(read(), keep)
        if not found:
            break
        killed += found
    return killed


def kill_session(sid: int) -> None:
    """SIGKILL a session leader and every process left in its session."""
    for pid in [sid, *session_members(sid)]:
        try:
            os.kill(pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass


# /proc ------------------------------------------------------------------------------

def stat_fields(pid: int) -> list[str] | None:
    """/proc/PID/stat after the command name (which may hold spaces and parentheses):
    [0] state, [1] ppid, [2] pgrp, [3] session, ... [19] start time in ticks."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None


def children_of(pid: int) -> list[int]:
    """Direct children of a single-threaded process (Linux /proc children list)."""
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as f:
            return [int(p) for p in f.read().split()]
    except OSError:
        return []


def session_of(pid: int) -> int | None:
    try:
        return os.getsid(pid)
    except (ProcessLookupError, PermissionError):
        return None


def session_members(sid: int) -> list[int]:
    """Every process of session `sid` except ourselves (a scan of /proc)."""
    me = os.getpid()
    members = []
    for entry in os.listdir("/proc"):
        if entry.isdigit() and int(entry) != me:
            fields = stat_fields(int(entry))
            if fields is not None and int(fields[3]) == sid:
                members.append(int(entry))
    return members
