"""Job children: forked ahead of time, one job each (or K with child reuse), killed as a
process group at the deadline.

    consumer (through its fork helper) ──fork──> job child (own process group)
       │  job pipe   ──>  [len][json: id, name, args]
       │  result pipe <── [len][json: "ok", result] | ["error", text]
       └─ pidfd: tells the consumer the child exited without a result

The next child is forked right after a job ends, so the fork is paid while the
consumer waits for work rather than between a task's arrival and its start. In a node
the consumer's fork helper (``forker``) forks them with ``fork_child``; ``Child.fork``
and ``execute`` run the same child from the calling process.

Every path ends in ``Child.kill``: SIGKILL to the child's whole group, then a reap.
There is no TERM grace period; it would stretch the deadline. Grandchildren that
left the group (setsid) are reparented to the process that forked the child, a child
subreaper, and are killed by ``kill_strays``.
"""

from __future__ import annotations

import ctypes
import json
import os
import select
import signal
import struct
import time
import traceback
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from stagerunner.protocol import Outcome, Status, Task

_HEADER = struct.Struct(">I")
_PR_SET_PDEATHSIG = 1
_PR_SET_CHILD_SUBREAPER = 36
_PR_SET_NAME = 15
_libc: Any = None


def _prctl(option: int, value: int | bytes) -> None:
    global _libc
    if _libc is None:
        _libc = ctypes.CDLL(None, use_errno=True)
    _libc.prctl(option, value, 0, 0, 0)


def set_comm(name: str) -> None:
    """The name `top` and `ps -o comm` show (15 bytes); cheap, unlike setproctitle."""
    _prctl(_PR_SET_NAME, name.encode()[:15])


def become_subreaper() -> None:
    """Orphaned grandchildren of our jobs get reparented to us, so we can kill them."""
    _prctl(_PR_SET_CHILD_SUBREAPER, 1)


def die_with_parent(expected_parent: int) -> None:
    """SIGKILL this process when its parent dies (and close the race if it already has)."""
    _prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() != expected_parent:
        os._exit(1)


@dataclass(frozen=True, slots=True)
class Limits:
    """What a consumer needs to run jobs; primitives only, so consumers stay lean."""

    job_timeout: float = 1.0
    max_job_timeout: float = 30.0
    modules: tuple[str, ...] = ()
    child_reuse: int = 1
    memory_mb: int | None = None
    result_max_bytes: int = 1 << 20

    def deadline_for(self, task: Task, spec_timeout: float | None) -> float:
        """The task's own timeout, else its @task timeout, else the node default; never
        above the hard cap. A NaN, infinite or non-positive value counts as unset."""
        for wanted in (task.timeout_s, spec_timeout):
            if isinstance(wanted, (int, float)) and 0 < wanted < float("inf"):
                return min(float(wanted), self.max_job_timeout)
        return min(self.job_timeout, self.max_job_timeout)


# Framing ---------------------------------------------------------------------------

def _frame(payload: bytes) -> bytes:
    return _HEADER.pack(len(payload)) + payload


def _read_exact(fd: int, n: int) -> bytes:
    chunks = []
    while n:
        chunk = os.read(fd, n)
        if not chunk:
            raise EOFError
        chunks.append(chunk)
        n -= len(chunk)
    return b"".join(chunks)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


# The job child ---------------------------------------------------------------------

Resolver = Callable[[str], Callable[..., Any]]


def run_job(func: Callable[..., Any], args_text: str, max_bytes: int) -> list[Any]:
    """Call the task; return the wire result ["ok", json] or ["error", text]. Never raises."""
    try:
        args = json.loads(args_text)
        value = func(*args) if isinstance(args, list) else func(**args)
    except BaseException as exc:  # the job's failure is data, whatever it was
        return ["error", "".join(traceback.format_exception(exc)).replace("\x00", "\\x00")]
    try:
        text = json.dumps(value, allow_nan=False)
    except (TypeError, ValueError) as exc:
        return ["error", f"result is not JSON-encodable: {exc}"]
    if "\\u0000" in text:  # valid JSON, but PostgreSQL's jsonb cannot store it
        return ["error", "result is not storable: it contains a NUL character (\\u0000)"]
    if len(text) > max_bytes:
        return ["error", f"result too large: {len(text)} bytes of JSON, limit {max_bytes}"]
    return ["ok", text]


def _child_main(job_r: int, result_w: int, parent: int, limits: Limits, resolve: Resolver,
                title: str) -> None:
    os.setpgrp()
    die_with_parent(parent)
    _std_streams_on_fds()
    if title:  # comm only: setproctitle costs ~0.7 ms a fork
        set_comm(title)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    if limits.memory_mb:
        import resource

        size = limits.memory_mb << 20
        resource.setrlimit(resource.RLIMIT_AS, (size, size))
    for _ in range(limits.child_reuse):
        try:
            header = _read_exact(job_r, _HEADER.size)
        except EOFError:
            return
        _task_id, name, args_text = json.loads(_read_exact(job_r, _HEADER.unpack(header)[0]))
        reply = run_job(resolve(name), args_text, limits.result_max_bytes)
        _flush_std()
        _write_all(result_w, _frame(json.dumps(reply).encode()))


def _std_streams_on_fds() -> None:
    """print() in a job goes to fds 1 and 2, even where the parent had sys.stdout elsewhere
    (a test harness capturing output): only fds 0-2 survive into the child."""
    import sys

    for name, fd in (("stdout", 1), ("stderr", 2)):
        stream = getattr(sys, name)
        try:
            if stream is not None and stream.fileno() == fd:
                continue
        except (AttributeError, OSError, ValueError):
            pass
        setattr(sys, name, open(fd, "w", buffering=1, closefd=False, errors="replace"))


def _flush_std() -> None:
    import sys

    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except Exception:  # a closed or broken stream must not cost the result
            pass


def fork_running(keep_fds: set[int], body: Callable[[], object]) -> int:
    """Fork a process that holds only fds 0-2 and `keep_fds`, runs `body` and exits
    (0, or 70 if it raised); never returns in the child. The child's pid."""
    pid = os.fork()
    if pid == 0:
        code = 0
        try:
            _close_fds_except({0, 1, 2, *keep_fds})
            body()
        except BaseException:
            code = 70
        finally:
            os._exit(code)
    return pid


def fork_child(limits: Limits, resolve: Resolver, title: str = "") -> tuple[int, int, int]:
    """Fork a job child that waits for its job; (pid, job pipe's write end, result pipe's
    read end)."""
    job_r, job_w = os.pipe()
    result_r, result_w = os.pipe()
    parent = os.getpid()
    pid = fork_running({job_r, result_w},
                       lambda: _child_main(job_r, result_w, parent, limits, resolve, title))
    try:
        os.setpgid(pid, pid)  # the child does it too; whichever runs first, its group
    except OSError:           # exists before anyone can signal it
        pass
    os.close(job_r)
    os.close(result_w)
    return pid, job_w, result_r


# The consumer's handle on a child --------------------------------------------------

class Child:
    """A forked job child waiting for (or running) its job."""

    def __init__(self, pid: int, job_w: int, result_r: int) -> None:
        self.pid = pid
        self.job_w = job_w
        self.result_r = result_r
        self.pidfd = os.pidfd_open(pid)
        self.jobs_sent = 0
        self.buffer = bytearray()
        self.status: int | None = None

    @classmethod
    def fork(cls, limits: Limits, resolve: Resolver, title: str = "") -> Child:
        """A child of this process (the consumer's fork helper makes its own the same way)."""
        return cls(*fork_child(limits, resolve, title))

    def send(self, task: Task) -> None:
        self.jobs_sent += 1
        self.buffer.clear()
        payload = json.dumps([task.id, task.name, task.args]).encode()
        try:
            _write_all(self.job_w, _frame(payload))
        except BrokenPipeError:
            pass  # the child already died; the pidfd will say so

    def fds(self) -> list[int]:
        return [self.result_r, self.pidfd]

    def poll_result(self) -> list[Any] | None:
        """Read what is available without blocking; the reply once it is complete."""
        try:
            chunk = os.read(self.result_r, 1 << 16)
        except BlockingIOError:
            return None
        self.buffer += chunk
        return self._complete()

    def drain_result(self) -> list[Any] | None:
        """After the child exited: whatever complete reply it left in the pipe."""
        os.set_blocking(self.result_r, False)
        try:
            while chunk := os.read(self.result_r, 1 << 16):
                self.buffer += chunk
        except BlockingIOError:
            pass
        finally:
            os.set_blocking(self.result_r, True)
        return self._complete()

    def _complete(self) -> list[Any] | None:
        if len(self.buffer) < _HEADER.size:
            return None
        size = _HEADER.unpack_from(self.buffer)[0]
        if len(self.buffer) < _HEADER.size + size:
            return None
        reply = json.loads(bytes(self.buffer[_HEADER.size:_HEADER.size + size]))
        del self.buffer[:_HEADER.size + size]
        return reply if isinstance(reply, list) else ["error", "malformed reply from job child"]

    def exited(self) -> bool:
        return bool(select.select([self.pidfd], [], [], 0)[0])

    def kill(self, wait: bool = True) -> int | None:
        """SIGKILL the whole group and close the pipes. With `wait`, reap the child and
        return its wait status; without, the caller reaps it later (``reap``), so the
        consumer does not sit in waitpid while the kernel tears the child down."""
        if self.status is not None:
            return self.status  # reaped: its pid may belong to someone else by now
        sigkill_group(self.pid)
        for fd in (self.job_w, self.result_r):
            _close(fd)
        self.job_w = self.result_r = -1
        if wait:
            self.reap(block=True)
        return self.status

    def reap(self, block: bool = False) -> bool:
        """Collect the child's exit status once it is dead; True when it has been reaped."""
        if self.status is None:
            pid, status = os.waitpid(self.pid, 0 if block else os.WNOHANG)
            if pid == 0:
                return False
            self.status = status
            _close(self.pidfd)
            self.pidfd = -1
        return True


def sigkill_group(pid: int) -> None:
    """SIGKILL the process group led by `pid`, then `pid` itself (in case it died or was
    killed before it could call setpgrp)."""
    for kill in (os.killpg, os.kill):
        try:
            kill(pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass


def _close(fd: int) -> None:
    if fd >= 0:
        try:
            os.close(fd)
        except OSError:
            pass


def _close_fds_except(keep: set[int]) -> None:
    top = os.sysconf("SC_OPEN_MAX") if hasattr(os, "sysconf") else 65536
    low = 0
    for fd in sorted(keep):
        if fd > low:
            os.closerange(low, fd)
        low = fd + 1
    os.closerange(low, top)


# Outcomes --------------------------------------------------------------------------

def describe_exit(status: int) -> str:
    code = os.waitstatus_to_exitcode(status)
    if code < 0:
        try:
            name = signal.Signals(-code).name
        except ValueError:
            name = str(-code)
        return f"job child was killed by signal {name} before sending a result"
    return f"job child exited with code {code} without sending a result"


def outcome_from_reply(task: Task, reply: list[Any], runtime_ms: float) -> Outcome:
    if reply and reply[0] == "ok":
        return Outcome(task.id, task.attempt, Status.SUCCESS, runtime_ms, result=reply[1])
    return Outcome(task.id, task.attempt, Status.ERROR, runtime_ms, error=str(reply[-1]))


def execute(task: Task, timeout: float, limits: Limits, resolve: Resolver,
            child: Child | None = None) -> Outcome:
    """Run one task in a (pre-forked or new) child and always leave no process behind.

    Blocking; the consumer runs the same steps interleaved with its pipe.
    """
    child = child or Child.fork(limits, resolve)
    started = time.monotonic()
    deadline = started + timeout
    child.send(task)
    try:
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                child.kill()
                return Outcome(task.id, task.attempt, Status.TIMEOUT,
                               (time.monotonic() - started) * 1000,
                               error=f"killed at its deadline of {timeout:g} s")
            ready, _, _ = select.select(child.fds(), [], [], remaining)
            reply = child.poll_result() if child.result_r in ready else None
            if reply is None and child.pidfd in ready:
                reply = child.drain_result()
                if reply is None:
                    ms = (time.monotonic() - started) * 1000
                    return Outcome(task.id, task.attempt, Status.ERROR, ms,
                                   error=describe_exit(child.kill()))
            if reply is not None:
                return outcome_from_reply(task, reply, (time.monotonic() - started) * 1000)
    finally:
        child.kill()
        kill_strays(set())


def children_of(pid: int) -> list[int]:
    """Direct children of a single-threaded process (Linux /proc children list)."""
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as f:
            return [int(p) for p in f.read().split()]
    except OSError:
        return []


def kill_strays(keep: set[int]) -> None:
    """Kill and reap every child of ours except `keep` (escaped grandchildren of jobs)."""
    kill_and_reap(children_of(os.getpid()), keep)


def kill_and_reap(children: Iterable[int], keep: set[int]) -> None:
    """SIGKILL each child of ours (and its group) that is not in `keep`, and reap it."""
    for pid in children:
        if pid in keep:
            continue
        sigkill_group(pid)
        try:
            os.waitpid(pid, 0)
        except ChildProcessError:
            pass
