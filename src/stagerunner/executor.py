"""The one way to watch a job: the consumer's end of a job child, killed as a process
group at the deadline.

    consumer (through its fork helper) ──fork──> job child (own process group, ``child``)
       │  job pipe   ──>  [len][json: id, name, args, attempt, max attempts, queue, times]
       │  result pipe <── [len][finished][json: "ok", result] | ["error", text(, retry fields)]
       └─ pidfd: tells the consumer the child exited without a result

``child.fork_child`` makes a child that waits for its job; the consumer's fork helper
(``forker``) calls it, so the fork is paid while the consumer waits for work rather than
between a task's arrival and its start. ``ChildHandle`` is the consumer's end of one
child, and ``Job`` watches one task in it: the result, an exit without one, or the
deadline, each turned into its ``Outcome`` here and nowhere else. A result the child
stamped at or after the deadline is a timeout too (``Job._replied`` says when that
happens): it is never let pass as a success.

There is no TERM grace period: it would stretch the deadline. Killing is the
consumer's (a SIGKILL to the child's group, see ``forker.Forker.kill``).
"""

from __future__ import annotations

import json
import math
import os
import select
import signal
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

from stagerunner import jsontext, procs, retry
from stagerunner.child import LEFT_RUNNING, REPLY_HEADER, frame, write_all
from stagerunner.protocol import Outcome, Status, Task

# A dying child closes its pipes a moment before its pidfd says it is gone: how long an
# end of the result pipe is given to turn out to be an exit.
EXIT_GRACE_S = 0.05


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
    finished: float | None = None  # when its last job returned, by the child's own clock
    left_running: bool = False  # its job left a thread or a process: not to be reused
    buffer: bytearray = field(default_factory=bytearray)

    def __post_init__(self) -> None:
        if self.pidfd < 0:
            self.pidfd = os.pidfd_open(self.pid)

    def send(self, task: Task, deadline: float | None = None) -> None:
        """The job, with what its context needs (`deadline`: epoch seconds)."""
        self.jobs_sent += 1
        self.buffer.clear()
        self.finished = None
        payload = jsontext.dumps([task.id, task.name, task.args, task.attempt,
                                  task.max_attempts, task.queue, task.enqueued_at,
                                  deadline]).encode()
        try:
            write_all(self.job_w, frame(payload))
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
        if len(self.buffer) < REPLY_HEADER.size:
            return None
        size, finished, flags = REPLY_HEADER.unpack_from(self.buffer)
        if size > self.max_reply:
            return self._broken(f"the job wrote garbage into its result pipe (a reply of "
                                f"{size:,} bytes announced, at most {self.max_reply:,} possible)")
        end = REPLY_HEADER.size + size
        if len(self.buffer) < end:
            return None
        try:
            reply = json.loads(bytes(self.buffer[REPLY_HEADER.size:end]))
        except (ValueError, RecursionError):
            reply = None
        del self.buffer[:end]
        if not (isinstance(reply, list) and len(reply) in (2, 3) and reply[0] in ("ok", "error")
                and isinstance(reply[1], str) and isinstance((reply + [{}])[2], dict)
                and math.isfinite(finished)):
            return self._broken("the job wrote garbage into its result pipe (not a reply)")
        self.finished = finished
        self.left_running = bool(flags & LEFT_RUNNING)
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
        if now < self.deadline:
            return None
        if child.result_r not in ready and select.select([child.result_r], [], [], 0)[0]:
            # A select woken past its timeout may come back empty without looking again
            # (CPython after a signal, a node thawed from SIGSTOP): a reply already in the
            # pipe still decides the outcome, stamped late or not.
            return self.check([child.result_r], now)
        return Ending.EXPIRED

    def outcome(self, ending: Ending, now: float, wait_status: int = 0) -> Outcome:
        t, d = self.task, self.timeout
        if ending is Ending.EXPIRED:
            return Outcome(t.id, t.attempt, Status.TIMEOUT, self.runtime_ms(now), deadline_s=d,
                           error=f"killed at its deadline of {d:g} s")
        if ending is Ending.EXITED:
            return Outcome(t.id, t.attempt, Status.ERROR, self.runtime_ms(now), deadline_s=d,
                           error=describe_exit(wait_status))
        return self._replied(now)

    def _replied(self, now: float) -> Outcome:
        """A reply's outcome. One stamped at or past the deadline is a timeout whatever it
        says (its result, its error and its retry verdict are dropped): the job ran on
        while no one could kill it, its node frozen or starved, or in the moment before
        its consumer woke for the kill."""
        t, d = self.task, self.timeout
        stamp = self.child.finished  # None for a reply we made up (garbage in the pipe)
        end = now if stamp is None else min(max(stamp, self.started), now)
        ms = self.runtime_ms(end)
        if stamp is not None and end >= self.deadline:
            return Outcome(t.id, t.attempt, Status.TIMEOUT, ms, deadline_s=d,
                           error=f"finished {end - self.deadline:.3f} s past its deadline of "
                                 f"{d:g} s, before it could be killed; its result was "
                                 f"discarded")
        reply = self.reply or ["error", ""]
        if reply[0] == "ok":
            return Outcome(t.id, t.attempt, Status.SUCCESS, ms, result=reply[1], deadline_s=d)
        return Outcome(t.id, t.attempt, Status.ERROR, ms, error=str(reply[1]), deadline_s=d,
                       **retry.from_reply(reply[2] if len(reply) > 2 else {}))

    def cancelled(self, now: float) -> Outcome:
        return Outcome(self.task.id, self.task.attempt, Status.CANCELLED, self.runtime_ms(now),
                       error="cancelled while running", deadline_s=self.timeout)

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
