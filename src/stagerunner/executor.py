"""Job children, and the one way to watch a job: forked ahead of time, one job each (or K
with child reuse), killed as a process group at the deadline.

    consumer (through its fork helper) ──fork──> job child (own process group)
       │  job pipe   ──>  [len][json: id, name, args, attempt, max attempts, queue, times]
       │  result pipe <── [len][json: "ok", result] | ["error", text(, retry fields)]
       └─ pidfd: tells the consumer the child exited without a result

``fork_child`` makes a child that waits for its job; the consumer's fork helper
(``forker``) calls it, so the fork is paid while the consumer waits for work rather than
between a task's arrival and its start. ``ChildHandle`` is the consumer's end of one
child, and ``Job`` watches one task in it: the result, an exit without one, or the
deadline, each turned into its ``Outcome`` here and nowhere else.

There is no TERM grace period: it would stretch the deadline. Killing is the
consumer's (a SIGKILL to the child's group, see ``forker.Forker.kill``).
"""

from __future__ import annotations

import json
import os
import select
import signal
import struct
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

from stagerunner import arguments, procs, retry, running
from stagerunner.protocol import Outcome, Status, Task

_HEADER = struct.Struct(">I")
# Error text a job sends back (a traceback, a message) is cut to this, keeping its head
# and its tail: a job that raises a 60 MB error must not spend its deadline carrying it.
ERROR_MAX_CHARS = 64 * 1024
# A dying child closes its pipes a moment before its pidfd says it is gone: how long an
# end of the result pipe is given to turn out to be an exit.
EXIT_GRACE_S = 0.05

Resolver = Callable[[str], Any]  # a task name -> its registry.Spec (or a bare function)


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

def frame(payload: bytes) -> bytes:
    """A length-prefixed message, as both pipes of a job child carry them."""
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

def run_job(func: Any, args_text: str, max_bytes: int) -> list[Any]:
    """Call the task (a registry.Spec or a function; ``running`` awaits an async one);
    return the wire result ["ok", json] or ["error", text(, retry fields)]. Never raises."""
    try:
        args, kwargs = arguments.unpack(json.loads(args_text))
        value = running.call(func, args, kwargs)
    except BaseException as exc:  # the job's failure is data, whatever it was
        return running.failed(func, exc, cap_error("".join(traceback.format_exception(exc))))
    return running.finished(value, max_bytes)


def cap_error(text: str, limit: int = ERROR_MAX_CHARS) -> str:
    """Storable error text of bounded size: NUL bytes escaped (PostgreSQL's text cannot
    hold them), and beyond `limit` characters the head and the tail with what was cut."""
    text = text.replace("\x00", "\\x00")
    if len(text) <= limit:
        return text
    half = limit // 2
    return (f"{text[:half]}\n[... {len(text) - 2 * half:,} characters cut; the error was "
            f"{len(text):,} characters long ...]\n{text[-half:]}")


def child_main(job_r: int, result_w: int, parent: int, limits: Limits, resolve: Resolver,
               title: str) -> None:
    """The job child: set itself up, then run up to `child_reuse` jobs, one reply each."""
    prepare_child(parent, limits, title)
    running.prepare()
    for _ in range(limits.child_reuse):
        job = read_job(job_r)
        if job is None:
            return
        running.enter(job)
        reply = run_job(resolve(job[1]), job[2], limits.result_max_bytes)
        running.leave()
        _flush_std()
        _write_all(result_w, frame(json.dumps(reply).encode()))


def prepare_child(parent: int, limits: Limits, title: str) -> None:
    """Its own process group, death with its parent, stdio on fds 1-2, its name, default
    signal dispositions and the memory limit."""
    os.setpgrp()
    procs.die_with_parent(parent)
    _std_streams_on_fds()
    if title:  # comm only: setproctitle would cost more than the rest of the set-up
        procs.set_comm(title)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    if limits.memory_mb:
        import resource

        size = limits.memory_mb << 20
        resource.setrlimit(resource.RLIMIT_AS, (size, size))


def read_job(job_r: int) -> list[Any] | None:
    """The next job from the job pipe ([id, name, args, ...]), or None once it closed."""
    try:
        header = _read_exact(job_r, _HEADER.size)
    except EOFError:
        return None
    job: list[Any] = json.loads(_read_exact(job_r, _HEADER.unpack(header)[0]))
    return job


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


def fork_child(limits: Limits, resolve: Resolver, title: str = "") -> tuple[int, int, int]:
    """Fork a job child that waits for its job; (pid, job pipe's write end, result pipe's
    read end)."""
    job_r, job_w = os.pipe()
    result_r, result_w = os.pipe()
    parent = os.getpid()
    pid = procs.fork_running({job_r, result_w},
                             lambda: child_main(job_r, result_w, parent, limits, resolve, title))
    try:
        os.setpgid(pid, pid)  # the child does it too; whichever runs first, its group
    except OSError:           # exists before anyone can signal it
        pass
    os.close(job_r)
    os.close(result_w)
    return pid, job_w, result_r


# The consumer's end of a child -------------------------------------------------------

def max_reply(limits: Limits) -> int:
    """The largest reply a job child can honestly write: its result or its capped error,
    JSON-escaped (at worst six bytes a character), in a two-element list."""
    return 6 * max(limits.result_max_bytes, ERROR_MAX_CHARS) + 1024


@dataclass(slots=True)
class ChildHandle:
    """A job child waiting for (or running) its job: its pipes and its pidfd. Its pid stays
    ours until the fork helper reaps it, which it does only once the consumer let go.

    What comes back on the result pipe is untrusted: a job may close the pipe, or write
    garbage or an endless header into it. Each ends the job in error (``broken`` says
    why) and the child is never given another job."""

    pid: int
    job_w: int
    result_r: int
    max_reply: int = 1 << 30  # bytes a reply may announce; more is garbage
    pidfd: int = -1
    jobs_sent: int = 0
    broken: str | None = None
    buffer: bytearray = field(default_factory=bytearray)

    def __post_init__(self) -> None:
        if self.pidfd < 0:
            self.pidfd = os.pidfd_open(self.pid)

    def send(self, task: Task, deadline: float | None = None) -> None:
        """The job, with what its context needs (`deadline`: epoch seconds)."""
        self.jobs_sent += 1
        self.buffer.clear()
        payload = json.dumps([task.id, task.name, task.args, task.attempt, task.max_attempts,
                              task.queue, task.enqueued_at, deadline]).encode()
        try:
            _write_all(self.job_w, frame(payload))
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
        if not chunk:  # the pipe stays readable at its end: say so once, never spin on it
            return self._broken("the job closed its result pipe without sending a result")
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
        if size > self.max_reply:
            return self._broken(f"the job wrote garbage into its result pipe (a reply of "
                                f"{size:,} bytes announced, at most {self.max_reply:,} possible)")
        if len(self.buffer) < _HEADER.size + size:
            return None
        try:
            reply = json.loads(bytes(self.buffer[_HEADER.size:_HEADER.size + size]))
        except (ValueError, RecursionError):
            reply = None
        del self.buffer[:_HEADER.size + size]
        if not (isinstance(reply, list) and len(reply) in (2, 3) and reply[0] in ("ok", "error")
                and isinstance(reply[1], str) and isinstance((reply + [{}])[2], dict)):
            return self._broken("the job wrote garbage into its result pipe (not a reply)")
        return reply

    def _broken(self, why: str) -> list[Any]:
        self.broken = why
        self.buffer.clear()
        return ["error", why]

    def exited(self, wait: float = 0.0) -> bool:
        """Has the child exited (waiting up to `wait` seconds to find out)?"""
        return bool(select.select([self.pidfd], [], [], wait)[0])

    def close(self) -> None:
        """Close our ends (the group was killed, or the child is done)."""
        for fd in (self.job_w, self.result_r, self.pidfd):
            procs.close_fd(fd)
        self.job_w = self.result_r = self.pidfd = -1


# Watching one job ----------------------------------------------------------------------

class Ending(Enum):
    """How a job ended, as far as its watcher can tell."""

    REPLIED = "replied"      # a complete result or error came back; the child may live on
    EXITED = "exited"        # the child is gone without a reply: its wait status says why
    EXPIRED = "expired"      # the deadline passed: kill its group


@dataclass(slots=True)
class Job:
    """One task running in one child, under its deadline (monotonic seconds)."""

    task: Task
    child: ChildHandle
    started: float
    deadline: float
    timeout: float
    reply: list[Any] | None = None

    def fds(self) -> list[int]:
        return self.child.fds()

    def check(self, ready: list[int], now: float) -> Ending | None:
        """What `select` said about the job's fds, as an ending (None: still running)."""
        child = self.child
        if child.result_r in ready:
            self.reply = child.poll_result()
            if child.broken is not None and child.exited(EXIT_GRACE_S):
                self.reply = None  # the pipe ended because the child did: say how it died
                ready = [*ready, child.pidfd]
        if self.reply is None and child.pidfd in ready:
            self.reply = child.drain_result()
            if self.reply is None:
                return Ending.EXITED
        if self.reply is not None:
            return Ending.REPLIED
        return Ending.EXPIRED if now >= self.deadline else None

    def outcome(self, ending: Ending, now: float, wait_status: int = 0) -> Outcome:
        t, ms = self.task, self.runtime_ms(now)
        if ending is Ending.REPLIED and self.reply and self.reply[0] == "ok":
            return Outcome(t.id, t.attempt, Status.SUCCESS, ms, result=self.reply[1])
        if ending is Ending.REPLIED:
            reply = self.reply or ["error", ""]
            return Outcome(t.id, t.attempt, Status.ERROR, ms, error=str(reply[1]),
                           **retry.from_reply(reply[2] if len(reply) > 2 else {}))
        if ending is Ending.EXITED:
            return Outcome(t.id, t.attempt, Status.ERROR, ms, error=describe_exit(wait_status))
        return Outcome(t.id, t.attempt, Status.TIMEOUT, ms,
                       error=f"killed at its deadline of {self.timeout:g} s")

    def cancelled(self, now: float) -> Outcome:
        return Outcome(self.task.id, self.task.attempt, Status.CANCELLED, self.runtime_ms(now),
                       error="cancelled while running")

    def runtime_ms(self, now: float) -> float:
        return (now - self.started) * 1000


def describe_exit(status: int) -> str:
    code = os.waitstatus_to_exitcode(status)
    if code < 0:
        try:
            name = signal.Signals(-code).name
        except ValueError:
            name = str(-code)
        return f"job child was killed by signal {name} before sending a result"
    return f"job child exited with code {code} without sending a result"
