"""Signals only wake the supervisor's loop: each handler is empty, and ``set_wakeup_fd``
writes the signal's number to a socket that the loop waits on with its stages'
sentinels; the loop then decides what it means. SIGTERM and SIGINT stop the node;
SIGHUP reloads it (the stop sequence, then fresh stages that import the task code anew).
"""

from __future__ import annotations

import signal
import socket

STOP = (signal.SIGTERM, signal.SIGINT)
RELOAD = signal.SIGHUP
# What the supervisor logs when it begins each one; both run the stop sequence (the
# producer stops claiming, running jobs finish, unstarted tasks go back to waiting).
_STOPPING = ("stopping: no more claims, running jobs finish, unstarted tasks go back",
             "node.stopping")
MEANING = {signal.SIGTERM: _STOPPING, signal.SIGINT: _STOPPING,
           signal.SIGHUP: ("reloading: running jobs finish, then fresh stages import the task "
                           "modules anew", "node.reloading")}


class Wakeup:
    def __init__(self) -> None:
        self.r, self.w = socket.socketpair()

    def install(self) -> None:
        self.w.setblocking(False)
        signal.set_wakeup_fd(self.w.fileno(), warn_on_full_buffer=False)
        for sig in (*STOP, RELOAD):
            signal.signal(sig, lambda *_: None)  # the wakeup fd carries the number

    def fileno(self) -> int:
        return self.r.fileno()

    def fds(self) -> tuple[int, int]:
        """Both ends: a stage forked from the supervisor closes them."""
        return self.r.fileno(), self.w.fileno()

    def read(self) -> int | None:
        """The signal that arrived: a stop wins over a reload; None if nothing did."""
        got = set(self.r.recv(64))
        stops = [s for s in STOP if s in got]
        return stops[0] if stops else (RELOAD if RELOAD in got else None)


def forget() -> None:
    """In a process forked from the supervisor after ``Wakeup.install``: its handlers and
    its wake-up fd are not ours, and a signal to us must never wake its loop."""
    signal.set_wakeup_fd(-1)
    for sig in (*STOP, RELOAD):
        signal.signal(sig, signal.SIG_DFL)
