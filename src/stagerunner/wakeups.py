"""When the producer must wake, and for which queues it should claim: pure bookkeeping,
driven with a clock the caller passes in (unit tests pass a fake one).

- ``wanted``: queues that may have due work. A NOTIFY naming a queue, the fallback poll,
  the timer of the next scheduled task and a reconnect put queues in; a claim that got
  fewer rows than it asked for takes its queue out until one of those fires again.
- ``paused``: queues no node may claim from; re-read after a reconnect or a NOTIFY on
  the queues channel (``pauses_known`` is False until then).
- ``next_due``: the monotonic time of the earliest scheduled task the database told us
  of (every claim that drains a queue says when its next one is due).
- named timers for the periodic services (heartbeat and rescue, cron, retention, the
  liveness report), each with its next monotonic deadline.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

OFFLINE_TIMERS = frozenset({"alive"})  # the liveness report goes on without a database


@dataclass
class Wakeups:
    queues: tuple[str, ...]
    poll_interval: float
    wanted: set[str] = field(default_factory=set)
    paused: set[str] = field(default_factory=set)
    pauses_known: bool = False
    next_poll: float = 0.0
    next_due: float | None = None
    timers: dict[str, float] = field(default_factory=dict)
    polling: bool = False  # no LISTEN: each poll also stands for the notifications missed
    cancels_known: bool = True  # False: ask the database which of our tasks were cancelled

    def __post_init__(self) -> None:
        self.wanted = set(self.queues)

    # What wakes us ------------------------------------------------------------------

    def tick(self, now: float) -> None:
        """Fire the fallback poll and the next-due timer when their time has come."""
        if now >= self.next_poll:
            self.next_poll = now + self.poll_interval
            self._everything_may_be_due()
            if self.polling:  # before this poll's claim: a pause would have been notified
                self.pauses_known = self.cancels_known = False
        if self.next_due is not None and now >= self.next_due:
            self.next_due = None
            self._everything_may_be_due()

    def notified(self, channel: str, payload: str) -> None:
        """A notification, a hint to wake up and never an order: anyone who can connect
        may send one, with any payload. A cancel makes us ask the database which of our
        tasks really have one requested; a queue name we do not serve is ignored."""
        if channel == "stagerunner_cancel":
            self.cancels_known = False
        if channel == "stagerunner_queues":
            self.pauses_changed()
        if channel in ("stagerunner_queues", "stagerunner_tasks"):
            self.tasks_notified(payload.split(","))

    def tasks_notified(self, queues: Iterable[str]) -> None:
        """Work arrived in (or came back to) these queues; names we do not serve are ignored,
        and "*" (an insert into more queues than a payload can name) means all of ours."""
        queues = list(queues)
        self.wanted.update(self.queues if "*" in queues else (q for q in queues if q in self.queues))

    def pauses_changed(self) -> None:
        self.pauses_known = False

    def reconnected(self) -> None:
        """Anything may have happened while we were away (a cancel sent then was not heard)."""
        self.pauses_known = self.cancels_known = False
        self._everything_may_be_due()

    def set_paused(self, paused: Iterable[str]) -> None:
        self.paused = set(paused)
        self.pauses_known = True

    def drained(self, queue: str) -> None:
        """A claim got fewer rows than it asked for: nothing more is due in `queue` now."""
        self.wanted.discard(queue)

    def due_in(self, seconds: float | None, now: float) -> None:
        """The database's answer: the next scheduled task is due in `seconds` (None: none)."""
        if seconds is not None:
            self.wake_at(now + max(seconds, 0.0))

    def wake_at(self, due: float) -> None:
        self.next_due = due if self.next_due is None else min(self.next_due, due)

    def _everything_may_be_due(self) -> None:
        self.wanted = set(self.queues)

    # What to do -----------------------------------------------------------------------

    def claimable(self) -> list[str]:
        """Wanted queues that are not paused, in a stable order."""
        return sorted(q for q in self.wanted if q not in self.paused)

    def due(self, timer: str, now: float) -> bool:
        return now >= self.timers.get(timer, 0.0)

    def schedule(self, timer: str, at: float) -> None:
        self.timers[timer] = at

    def timeout(self, now: float, *, claim_now: bool, online: bool = True,
                extra: Iterable[float] = ()) -> float:
        """Seconds to block: none when a claim is worth making now, else until the
        earliest timer (the poll, the next due task, every service, `extra`). Offline,
        only the timers in OFFLINE_TIMERS count: the others need the database."""
        if claim_now:
            return 0.0
        timers = [t for name, t in self.timers.items() if online or name in OFFLINE_TIMERS]
        deadlines = [self.next_poll, *timers, *extra]
        if self.next_due is not None and online:
            deadlines.append(self.next_due)
        return max(0.0, min(deadlines) - now)
