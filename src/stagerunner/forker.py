"""The consumer's fork helper: a small process that forks the consumer's job children.

    consumer ══socket══ fork helper ──fork──> job child (own process group, dies with it)
        └── holds each child's job pipe, result pipe and pidfd; SIGKILLs its group itself

Why a helper: a job child forked straight from the consumer shares every page with it
while it waits for its job, so each page the consumer's loop writes afterwards (in
CPython every object it touches, through its refcount) is copied into the waiting
child. The helper's loop touches few pages per fork, and the consumer, now sharing
pages with no short-lived process, pays none (the README's performance section has the
measurement).

The consumer still owns each job's deadline: it gets the child's pipes (SCM_RIGHTS) and
opens its pidfd, and at the deadline it SIGKILLs the child's group without asking
anyone. The helper reaps a child only after the consumer released it, so the pid the
consumer signals is never reused under it (an unreaped child keeps its pid).

Messages, one SEQPACKET datagram each:

    consumer -> helper   F          fork a child
                         R<pid>     released (killed or exited): reap it, kill strays
                         W<pid>     the same, and report its wait status
                         S          kill strays (after each job when children are reused)
    helper -> consumer   C<pid>     a child waiting for its job, with [job_w, result_r]
                         X<pid><st> the wait status asked for with W

A stray is a child of the helper that it did not fork: a job's descendant that escaped
its process group and was reparented to the helper, a child subreaper. When the
helper's socket closes (the consumer stopped or died) it kills every group it knows and
exits; it also dies with the consumer (PDEATHSIG), and its children die with it.
"""

from __future__ import annotations

import logging
import os
import select
import signal
import socket
import struct
import time

from stagerunner import forking, logs, procs
from stagerunner.child import Limits, Resolver, fork_child, max_reply, prepare_parent
from stagerunner.executor import ChildHandle

log = logging.getLogger(__name__)
_PID = struct.Struct(">i")
_EXIT = struct.Struct(">ii")
_REAP_POLL_S = 0.05  # how often killed children are reaped while some are still dying
_REPLY_TIMEOUT_S = 10.0  # a helper that does not answer in this long is stuck or gone
_CHILDREN_READ = 1 << 16  # bytes of /proc's children list read per sweep
_SWEEP_GAP_S = 0.1  # with child reuse, what a job left behind is killed at most this late


class ForkerGone(Exception):
    """The fork helper died or stopped answering; the consumer cannot get job children."""


class Forker:
    """The consumer's handle: asks for children, kills and releases them, learns exit
    statuses."""

    def __init__(self, pid: int, sock: socket.socket) -> None:
        self.pid = pid
        self.sock = sock
        sock.settimeout(_REPLY_TIMEOUT_S)  # a stopped helper must not block a send forever
        self.requested = False
        self.ready: list[ChildHandle] = []
        self.statuses: dict[int, int] = {}
        self.max_reply = 1 << 30
        self.swept_at = float("-inf")
        self.sweep_at = 0.0  # a sweep is owed from then on (0: none is)
        self.blockers: list[str] | None = None  # for ``announce``; None once said

    @classmethod
    def start(cls, limits: Limits, resolve: Resolver, name: str = "", title: str = "") -> Forker:
        """Fork the helper. `title` is its process title (its job children keep it);
        `name` (e.g. "c0") goes into `comm`: sr-job-c0 for its job children."""
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        consumer = os.getpid()
        comm = f"sr-job-{name}".encode()[:15] if name else b""
        helper = ForkHelper(theirs, consumer, limits, resolve, comm)
        helper.bare = not (blockers := forking.blockers())
        pid = forking.fork_running({theirs.fileno()}, lambda: helper.run(title))
        theirs.close()
        forker = cls(pid, ours)
        forker.max_reply = max_reply(limits)
        forker.blockers = blockers
        return forker

    def announce(self) -> None:
        """Log, once, which fork the job children get. Called when the producer first
        speaks: a consumer launched for a start that then fails says nothing."""
        if self.blockers is not None:
            _say_fork(self.blockers)
            self.blockers = None

    def request(self) -> None:
        """Have a child forked ahead of time (at most one outstanding)."""
        if not self.requested:
            self._send(b"F")
            self.requested = True

    def take(self) -> ChildHandle:
        """The requested child (asking for one first if needed), waiting for its job."""
        self.request()
        while not self.ready:
            self._receive()
        self.requested = False
        return self.ready.pop()

    def kill(self, child: ChildHandle, wait: bool = False) -> int | None:
        """SIGKILL the child's group, close our ends, release it to the helper; with `wait`,
        its wait status. The pid is still ours: the helper reaps only released children."""
        procs.sigkill_group(child.pid)
        child.close()
        self._send((b"W" if wait else b"R") + _PID.pack(child.pid))
        if not wait:
            return None
        while child.pid not in self.statuses:
            self._receive()
        return self.statuses.pop(child.pid)

    def sweep(self, now: float) -> None:
        """Have strays killed (after a job of a reused child): now, or, if a sweep went out
        within _SWEEP_GAP_S, when ``sweep_due`` says. A reused child can end thousands of
        jobs a second, and each sweep wakes the helper to read /proc."""
        if not self.sweep_at:
            self.sweep_at = max(now, self.swept_at + _SWEEP_GAP_S)
        self.sweep_due(now)

    def sweep_due(self, now: float) -> float | None:
        """Send the owed sweep if it is due; when the owed one is due (None: none is)."""
        if self.sweep_at and now >= self.sweep_at:
            self._send(b"S")
            self.swept_at, self.sweep_at = now, 0.0
        return self.sweep_at or None

    def fileno(self) -> int:
        return self.sock.fileno()

    def pump(self) -> None:
        """Take in what the helper sent (a child, a status); ForkerGone if it is gone."""
        self._receive()

    def close(self) -> None:
        """Stop the helper (it kills what it still has) and reap it."""
        try:
            for child in self.ready:
                self.kill(child)
        except ForkerGone:
            pass  # and so are its children (PDEATHSIG)
        self.ready = []
        self.sock.close()
        deadline = time.monotonic() + _REPLY_TIMEOUT_S
        try:
            while os.waitpid(self.pid, os.WNOHANG)[0] == 0:
                if time.monotonic() > deadline:  # stopped or stuck: it must not outlive us
                    os.kill(self.pid, signal.SIGKILL)
                    os.waitpid(self.pid, 0)
                    break
                time.sleep(0.002)
        except ChildProcessError:
            pass

    def _send(self, message: bytes) -> None:
        try:
            self.sock.send(message)
        except OSError as exc:
            raise ForkerGone(f"fork helper {self.pid} is gone: {exc}") from None

    def _receive(self) -> None:
        if not select.select([self.sock], [], [], _REPLY_TIMEOUT_S)[0]:
            raise ForkerGone(f"fork helper {self.pid} did not answer in {_REPLY_TIMEOUT_S:g} s")
        try:
            message, fds, _, _ = socket.recv_fds(self.sock, 16, 2)
        except OSError as exc:
            raise ForkerGone(f"fork helper {self.pid} is gone: {exc}") from None
        if message[:1] == b"C" and len(fds) == 2:
            self.ready.append(ChildHandle(_PID.unpack_from(message, 1)[0], fds[0], fds[1],
                                          self.max_reply))
        elif message[:1] == b"X":
            pid, status = _EXIT.unpack_from(message, 1)
            self.statuses[pid] = status
        else:
            for fd in fds:
                os.close(fd)
            raise ForkerGone(f"fork helper {self.pid} is gone (said {message[:8]!r})")


def _say_fork(blockers: list[str]) -> None:
    """Once per fork helper, which fork its children get: an operator can tell why jobs
    cost more on one node than on another."""
    if blockers:
        log.info("job children forked with os.fork: at-fork hooks may need to run",
                 extra={"event": "forker.fork", "fork": "os.fork", "modules": ",".join(blockers)})
    else:
        log.info("job children forked bare (no Python at-fork hook needs to run)",
                 extra={"event": "forker.fork", "fork": "bare"})


# The helper process ---------------------------------------------------------------------

class ForkHelper:
    """The helper's side: one ``step`` waits for a message (or, while released children are
    dying, for the next reap poll), handles it, reaps, and sweeps strays."""

    def __init__(self, sock: socket.socket, consumer: int, limits: Limits, resolve: Resolver,
                 job_title: bytes) -> None:
        self.sock = sock
        self.consumer = consumer
        self.limits = limits
        self.resolve = resolve
        self.job_title = job_title
        self.live: set[int] = set()  # forked, not released
        self.dying: dict[int, bool] = {}  # released, not reaped -> report its status
        self.children_fd = -1
        self.done = False
        self.bare = False  # fork job children without Python's at-fork hooks (``forking``)

    def run(self, title: str) -> None:
        procs.die_with_parent(self.consumer)
        procs.become_subreaper()
        if title:
            logs.set_title(title)
        # a task module that ignored SIGCHLD would have the kernel reap unreleased children,
        # and the consumer signal pids that are free again
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        prepare_parent()  # what every job child would otherwise set up again
        # one fd kept open and read with pread (which regenerates the list): opening the
        # file per job costs the helper page faults on every job
        me = os.getpid()
        if self.bare and len(os.listdir(f"/proc/{me}/task")) > 1:
            self.bare = False  # a C library's fork handler started a thread: os.fork copes
            _say_fork(["(a second thread)"])
        self.children_fd = os.open(f"/proc/{me}/task/{me}/children", os.O_RDONLY | os.O_CLOEXEC)
        try:
            while not self.done:
                self.step()
        finally:
            for pid in self.live:  # unreleased: killed, but reaped by the consumer (a
                procs.sigkill_group(pid)  # subreaper) once we are gone, never by us
            procs.kill_strays(set(self.live), self._children)  # released ones and strays

    def step(self) -> None:
        fd = self.sock.fileno()
        ready = select.select([fd], [], [], _REAP_POLL_S if self.dying else None)[0]
        kind = b""
        if ready:
            message = self.sock.recv(16)
            if not message:
                self.done = True
                return
            kind = message[:1]
            self._handle(message)
        # after a release or sweep, and once a released child is gone: its escaped
        # descendants are reparented to us only when it has exited
        if self._reap() or (ready and kind != b"F"):
            procs.kill_strays(self.live | self.dying.keys(), self._children)

    def _handle(self, message: bytes) -> None:
        kind = message[:1]
        if kind == b"F":
            self.live.add(self._fork())
        elif kind in (b"R", b"W"):
            pid = _PID.unpack_from(message, 1)[0]
            if pid not in self.live:
                return  # not ours: a confused consumer must not make us signal a stranger
            self.live.discard(pid)  # the consumer has SIGKILLed its group already
            self.dying[pid] = kind == b"W"
            self._reap(wait_for=pid if kind == b"W" else None)  # dead already when W asks

    def _fork(self) -> int:
        pid, job_w, result_r = fork_child(self.limits, self.resolve, self.job_title, self.bare)
        try:
            socket.send_fds(self.sock, [b"C" + _PID.pack(pid)], [job_w, result_r])
        finally:
            os.close(job_w)
            os.close(result_r)
        return pid

    def _reap(self, wait_for: int | None = None) -> int:
        """Reap the released children that are dead (and `wait_for`, however long it takes);
        report the statuses that were asked for. How many were reaped."""
        reaped = 0
        for pid, report in list(self.dying.items()):
            try:
                done, status = os.waitpid(pid, 0 if pid == wait_for else os.WNOHANG)
            except ChildProcessError:
                done, status = pid, 0
            if done == 0:
                continue
            del self.dying[pid]
            reaped += 1
            if report:
                self.sock.send(b"X" + _EXIT.pack(pid, status))
        return reaped

    def _children(self) -> list[int]:
        """Our children from the open /proc fd. What one read does not hold is left to the
        next round (the ones killed now are gone by then)."""
        data = os.pread(self.children_fd, _CHILDREN_READ, 0)
        if not data.endswith(b" "):  # every entry ends in a space: the last one was cut
            data = data.rsplit(b" ", 1)[0] if b" " in data else b""  # short; never guess it
        return [int(p) for p in data.split()]
