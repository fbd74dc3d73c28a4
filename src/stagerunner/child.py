"""The job child: forked ahead of time by the consumer's fork helper, it waits for its job
(or K with child reuse), runs it, and writes one reply per job. Framing, the child's
set-up and the bounds on what it sends back live here; the consumer's end of the pipes is
``executor``.

    job pipe     -> [len][json: id, name, args, attempt, max attempts, queue, times]
    result pipe  <- [len][finished][flags][json: "ok", result] | ["error", text(, retry fields)]

``finished`` is the child's CLOCK_MONOTONIC when the job returned. That clock is the
whole machine's and keeps counting while a process is stopped, so the consumer can tell a
job that finished after its deadline (its node was frozen across it) from one that
finished in time and was read late. ``flags``: LEFT_RUNNING when a reused child still has
a thread or a child process after its job returned (what the job left running): the
consumer then replaces it instead of giving it the next job, so nothing a job started
runs on past its end.
"""

from __future__ import annotations

import json
import os
import signal
import struct
import sys
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from stagerunner import arguments, forking, procs, running
from stagerunner.protocol import Task

HEADER = struct.Struct(">I")
REPLY_HEADER = struct.Struct(">IdB")  # a reply's length, when the job finished, flags
LEFT_RUNNING = 1  # flags: the job left a thread or a child process running
# Bound at import, before any task module: a job that patches time.monotonic (a frozen
# clock in its tests, say) cannot move its own finish stamp.
_clock_gettime, _MONOTONIC = time.clock_gettime, time.CLOCK_MONOTONIC
# Error text a job sends back (a traceback, a message) is cut to this, keeping its head
# and its tail: a job that raises a 60 MB error must not spend its deadline carrying it.
ERROR_MAX_CHARS = 64 * 1024

_WARM_JOB = '[0, "", "[]", 0, 1, "", 0.0, 0.0]'  # a job message's shape, for _warm_up
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
    return HEADER.pack(len(payload)) + payload


def reply_frame(payload: bytes, finished: float, flags: int = 0) -> bytes:
    """A reply as the result pipe carries it: `finished` is the job's monotonic end."""
    return REPLY_HEADER.pack(len(payload), finished, flags) + payload


_OK_NONE_PAYLOAD = json.dumps(running.OK_NONE).encode()


def _read_exact(fd: int, n: int) -> bytes:
    chunks = []
    while n:
        chunk = os.read(fd, n)
        if not chunk:
            raise EOFError
        chunks.append(chunk)
        n -= len(chunk)
    return b"".join(chunks)


def write_all(fd: int, data: bytes) -> None:
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
               title: bytes) -> None:
    """The job child: set itself up, then run up to `child_reuse` jobs, one reply each."""
    prepare_child(parent, limits, title)
    _warm_up()
    leftovers = Leftovers() if limits.child_reuse > 1 else None  # a fresh child dies anyway
    for _ in range(limits.child_reuse):
        job = read_job(job_r)
        if job is None:
            return
        running.enter(job)
        reply = run_job(resolve(job[1]), job[2], limits.result_max_bytes)
        finished = _clock_gettime(_MONOTONIC)
        running.leave()
        _flush_std()
        flags = LEFT_RUNNING if leftovers is not None and leftovers.found() else 0
        write_all(result_w, reply_frame(_encode(reply), finished, flags))
        if flags:
            return  # the consumer replaces us; our group dies with what the job left


class Leftovers:
    """What a job left running in a reused child: a thread, or a child process (a Popen
    it did not wait for, a zombie included). Two descriptors opened once, read with a
    syscall each per job: the thread count is the task directory's link count less two."""

    def __init__(self) -> None:
        me = os.getpid()
        self.tasks = os.open(f"/proc/{me}/task", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        self.children = os.open(f"/proc/{me}/task/{me}/children", os.O_RDONLY | os.O_CLOEXEC)

    def found(self) -> bool:
        try:
            return os.fstat(self.tasks).st_nlink > 3 or bool(os.pread(self.children, 16, 0))
        except OSError:  # the job closed our descriptors: no telling, so not reused
            return True


def _encode(reply: list[Any]) -> bytes:
    if reply is running.OK_NONE:  # most tasks return None: no JSON encoder in the child
        return _OK_NONE_PAYLOAD
    return json.dumps(reply).encode()


def _warm_up() -> None:
    """While the child waits for its job: write the pages that the start of a job writes
    first (in CPython, reference counts and allocator pages it shares with the fork
    helper), so that their copy-on-write faults are taken now, not between the job's
    arrival and the task's first line (~70 faults, 0.1-0.2 ms here)."""
    running.enter(json.loads(_WARM_JOB))
    arguments.unpack(json.loads("[]"))
    running.leave()


def prepare_parent() -> None:
    """Once, in the process that forks job children (the fork helper): what every child
    would otherwise set up again, each time paying for the pages it writes -- stdio on fds
    1-2, default SIGTERM and SIGINT, and job log records routed to the node's log."""
    _std_streams_on_fds()
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    running.prepare()


def prepare_child(parent: int, limits: Limits, title: bytes) -> None:
    """Its own process group, death with its parent, its name (`comm`, 15 bytes) and the
    memory limit (the rest was set up once, in its parent: ``prepare_parent``)."""
    os.setpgrp()
    procs.die_with_parent(parent)
    if title:  # comm only: setproctitle would cost more than the rest of the set-up
        procs.set_comm(title)
    if limits.memory_mb:
        import resource

        size = limits.memory_mb << 20
        resource.setrlimit(resource.RLIMIT_AS, (size, size))


def read_job(job_r: int) -> list[Any] | None:
    """The next job from the job pipe ([id, name, args, ...]), or None once it closed."""
    try:
        header = _read_exact(job_r, HEADER.size)
    except EOFError:
        return None
    job: list[Any] = json.loads(_read_exact(job_r, HEADER.unpack(header)[0]))
    return job


def _std_streams_on_fds() -> None:
    """print() in a job goes to fds 1 and 2, even where the parent had sys.stdout elsewhere
    (a test harness capturing output): only fds 0-2 survive into the child."""
    for name, fd in (("stdout", 1), ("stderr", 2)):
        stream = getattr(sys, name)
        try:
            if stream is not None and stream.fileno() == fd:
                continue
        except (AttributeError, OSError, ValueError):
            pass
        setattr(sys, name, open(fd, "w", buffering=1, closefd=False, errors="replace"))


def _flush_std() -> None:
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except Exception:  # a closed or broken stream must not cost the result
            pass


def fork_child(limits: Limits, resolve: Resolver, title: bytes = b"", bare: bool = False
               ) -> tuple[int, int, int]:
    """Fork a job child that waits for its job; (pid, job pipe's write end, result pipe's
    read end). `bare`: see ``forking``."""
    job_r, job_w = os.pipe()
    result_r, result_w = os.pipe()
    parent = os.getpid()
    pid = forking.fork_running({job_r, result_w},
                               lambda: child_main(job_r, result_w, parent, limits, resolve, title),
                               bare)
    try:
        os.setpgid(pid, pid)  # the child does it too; whichever runs first, its group
    except OSError:           # exists before anyone can signal it
        pass
    os.close(job_r)
    os.close(result_w)
    return pid, job_w, result_r


def max_reply(limits: Limits) -> int:
    """The largest reply a job child can honestly write: its result or its capped error,
    JSON-escaped (at worst six bytes a character), in a two-element list."""
    return 6 * max(limits.result_max_bytes, ERROR_MAX_CHARS) + 1024
