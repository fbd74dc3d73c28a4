"""The consumer's fork helper: a small process that forks the consumer's job children.

    consumer ══socket══ forker ──fork──> job child (own process group, dies with the forker)
        └── holds each child's job pipe, result pipe and pidfd; SIGKILLs its group itself

Why a helper: a job child forked straight from the consumer shares every page with it
while it waits for its job, so each page the consumer's loop writes afterwards (in
CPython every object it touches, through its refcount) is copied: ~280 page faults and
~0.8 ms of CPU per job on the development machine. The forker's loop touches ~90 pages
per fork, and the consumer, now sharing pages with no short-lived process, pays none.

The consumer still owns each job's deadline: it gets the child's pipes (SCM_RIGHTS) and
opens its pidfd, and at the deadline it SIGKILLs the child's group without asking
anyone. The forker reaps a child only after the consumer released it, so the pid the
consumer signals is never reused under it (an unreaped child keeps its pid).

Messages, one SEQPACKET datagram each:

    consumer -> forker   F          fork a child
                         R<pid>     released (killed or exited): reap it, kill strays
                         W<pid>     the same, and report its wait status
                         S          kill strays (after each job when children are reused)
    forker -> consumer   C<pid>     a child waiting for its job, with [job_w, result_r]
                         X<pid><st> the wait status asked for with W

A stray is a child of the forker that it did not fork: a job's grandchild that escaped
its process group and was reparented to the forker, a child subreaper. When the forker's
socket closes (the consumer stopped or died) it kills every group it knows and exits;
it also dies with the consumer (PDEATHSIG), and its children die with it.
"""

from __future__ import annotations

import os
import select
import signal
import socket
import struct
import time

from stagerunner import executor, logs
from stagerunner.executor import Child, Limits, Resolver

_PID = struct.Struct(">i")
_EXIT = struct.Struct(">ii")
_REAP_POLL_S = 0.05  # how often killed children are reaped while some are still dying
_REPLY_TIMEOUT_S = 10.0  # a forker that does not answer in this long is stuck or gone
_CHILDREN_READ = 1 << 16  # bytes of /proc's children list read per sweep


class ForkerGone(Exception):
    """The forker died or stopped answering; the consumer cannot get job children."""


class Forker:
    """The consumer's handle: asks for children, hands them back, learns exit statuses."""

    def __init__(self, pid: int, sock: socket.socket) -> None:
        self.pid = pid
        self.sock = sock
        sock.settimeout(_REPLY_TIMEOUT_S)  # a stopped forker must not block a send forever
        self.requested = False
        self.ready: list[ForkedChild] = []
        self.statuses: dict[int, int] = {}

    @classmethod
    def start(cls, limits: Limits, resolve: Resolver, name: str = "", title: str = "") -> Forker:
        """Fork the helper. `title` is its process title (its job children keep it);
        `name` (e.g. "c0") goes into `comm`: sr-job-c0 for its job children."""
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        consumer = os.getpid()
        pid = executor.fork_running(
            {theirs.fileno()}, lambda: _serve(theirs, consumer, limits, resolve, name, title))
        theirs.close()
        return cls(pid, ours)

    def request(self) -> None:
        """Have a child forked ahead of time (at most one outstanding)."""
        if not self.requested:
            self._send(b"F")
            self.requested = True

    def take(self) -> ForkedChild:
        """The requested child (asking for one first if needed), waiting for its job."""
        self.request()
        while not self.ready:
            self._receive()
        self.requested = False
        return self.ready.pop()

    def release(self, pid: int, report: bool) -> int | None:
        """The consumer is done with `pid` (already SIGKILLed or exited). With `report`,
        wait for its wait status."""
        self._send((b"W" if report else b"R") + _PID.pack(pid))
        if not report:
            return None
        while pid not in self.statuses:
            self._receive()
        return self.statuses.pop(pid)

    def sweep(self) -> None:
        self._send(b"S")

    def fileno(self) -> int:
        return self.sock.fileno()

    def pump(self) -> None:
        """Take in what the forker sent (a child, a status); ForkerGone if it is gone."""
        self._receive()

    def close(self) -> None:
        """Stop the forker (it kills what it still has) and reap it."""
        try:
            for child in self.ready:
                child.kill(wait=False)
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
            self.ready.append(ForkedChild(_PID.unpack_from(message, 1)[0], fds[0], fds[1], self))
        elif message[:1] == b"X":
            pid, status = _EXIT.unpack_from(message, 1)
            self.statuses[pid] = status
        else:
            for fd in fds:
                os.close(fd)
            raise ForkerGone(f"fork helper {self.pid} is gone (said {message[:8]!r})")


class ForkedChild(Child):
    """A job child of the forker. Killing it is the consumer's own SIGKILL to its group;
    reaping is the forker's, once the child is released."""

    def __init__(self, pid: int, job_w: int, result_r: int, forker: Forker) -> None:
        super().__init__(pid, job_w, result_r)
        self.forker = forker
        self.released = False

    def kill(self, wait: bool = True) -> int | None:
        """SIGKILL the group, close our ends, release it; with `wait`, its wait status."""
        if self.released:
            return self.status
        executor.sigkill_group(self.pid)  # unreleased, so unreaped: the pid is still ours
        for fd in (self.job_w, self.result_r, self.pidfd):
            executor._close(fd)
        self.job_w = self.result_r = self.pidfd = -1
        self.released = True
        self.status = self.forker.release(self.pid, report=wait)
        return self.status

    def reap(self, block: bool = False) -> bool:
        return True  # the forker reaps


# The forker process ---------------------------------------------------------------------

def _serve(sock: socket.socket, consumer: int, limits: Limits, resolve: Resolver,
           name: str, title: str) -> None:
    executor.die_with_parent(consumer)
    executor.become_subreaper()
    if title:
        logs.set_title(title)
    job_title = f"sr-job-{name}" if name else ""
    # a task module that ignored SIGCHLD would have the kernel reap unreleased children,
    # and the consumer signal pids that are free again
    signal.signal(signal.SIGCHLD, signal.SIG_DFL)
    me = os.getpid()
    live: set[int] = set()  # forked, not released
    dying: dict[int, bool] = {}  # released, not reaped -> report its status
    fd = sock.fileno()
    strays = _Strays(me)
    try:
        while True:
            ready = select.select([fd], [], [], _REAP_POLL_S if dying else None)[0]
            if ready:
                message = sock.recv(16)
                if not message:
                    return
                _handle(message, sock, live, dying, limits, resolve, job_title)
            # after a release or sweep, and once a released child is gone: its escaped
            # grandchildren are reparented to us only when it has exited
            if _reap(sock, dying) or (ready and message[:1] != b"F"):
                strays.kill(live | dying.keys())
    finally:
        for pid in live:  # unreleased: killed, but reaped by the consumer (a subreaper) once
            executor.sigkill_group(pid)  # we are gone, so its signals never meet a reused pid
        executor.kill_strays(set(live))  # released children and strays: killed and reaped


def _handle(message: bytes, sock: socket.socket, live: set[int],
            dying: dict[int, bool], limits: Limits, resolve: Resolver, job_title: str) -> None:
    kind = message[:1]
    if kind == b"F":
        live.add(_fork_child(sock, limits, resolve, job_title))
        return
    if kind in (b"R", b"W"):
        pid = _PID.unpack_from(message, 1)[0]
        if pid not in live:
            return  # not ours: a confused consumer must not make us signal a stranger
        live.discard(pid)  # the consumer has SIGKILLed its group already
        dying[pid] = kind == b"W"
        _reap(sock, dying, wait_for=pid if kind == b"W" else None)  # dead already when W asks


def _fork_child(sock: socket.socket, limits: Limits, resolve: Resolver, title: str) -> int:
    pid, job_w, result_r = executor.fork_child(limits, resolve, title)
    try:
        socket.send_fds(sock, [b"C" + _PID.pack(pid)], [job_w, result_r])
    finally:
        os.close(job_w)
        os.close(result_r)
    return pid


def _reap(sock: socket.socket, dying: dict[int, bool], wait_for: int | None = None) -> int:
    """Reap the released children that are dead (and `wait_for`, however long it takes);
    report the statuses that were asked for. How many were reaped."""
    reaped = 0
    for pid, report in list(dying.items()):
        try:
            done, status = os.waitpid(pid, 0 if pid == wait_for else os.WNOHANG)
        except ChildProcessError:
            done, status = pid, 0
        if done == 0:
            continue
        del dying[pid]
        reaped += 1
        if report:
            sock.send(b"X" + _EXIT.pack(pid, status))
    return reaped


class _Strays:
    """Kills the forker's children that it did not fork. Reads /proc's children list
    through one fd kept open (pread regenerates it): opening the file per job cost the
    forker ~60 page faults and ~0.15 ms. What one read does not hold is left to the next
    sweep (the ones killed now are gone by then)."""

    def __init__(self, me: int) -> None:
        self.fd = os.open(f"/proc/{me}/task/{me}/children", os.O_RDONLY | os.O_CLOEXEC)

    def kill(self, keep: set[int]) -> None:
        data = os.pread(self.fd, _CHILDREN_READ, 0)
        if not data.endswith(b" "):  # every entry ends in a space: the last one was cut
            data = data.rsplit(b" ", 1)[0] if b" " in data else b""  # short; never guess it
        executor.kill_and_reap(map(int, data.split()), keep)

