"""How many restarts a node allows, and which consumer deaths count (pure).

A consumer that died while running a job may have been killed by that job: the job is
quarantined for it (``completer.decide``), and the death is no reason to stop the node.
So a consumer's death counts against the restart limit only once the producer says no
job ran in it, or after ``EXPLAIN_S`` without a word from the producer.
"""

from __future__ import annotations

from collections import deque

EXPLAIN_S = 2.0  # how long a consumer's death waits for the producer to say a job ran in it


class RestartIntensity:
    """At most `limit` restarts within `window` seconds (OTP's intensity and period)."""

    def __init__(self, limit: int, window: float) -> None:
        self.limit, self.window = limit, window
        self.times: deque[float] = deque()

    def allow(self, now: float) -> bool:
        self.times.append(now)
        while self.times and now - self.times[0] > self.window:
            self.times.popleft()
        return len(self.times) <= self.limit


class Restarts:
    """The node's restart budget, with consumer deaths waiting for an explanation. The
    producer's word and the supervisor's reaping of the same death may come in either
    order, and a slot may die again before either: both are kept per slot, in order."""

    def __init__(self, limit: int, window: float) -> None:
        self.intensity = RestartIntensity(limit, window)
        self.unexplained: dict[int, list[float]] = {}  # slot -> when each death was reaped
        self.early: dict[int, list[bool]] = {}  # slot -> explanations before their reaping

    def allow(self, now: float) -> bool:
        """Count one restart; False once the limit is passed."""
        return self.intensity.allow(now)

    def consumer_died(self, slot: int, now: float) -> bool:
        """A consumer's death was reaped; False once the limit is passed."""
        early = self.early.get(slot)
        if early:
            return early.pop(0) or self.allow(now)
        self.unexplained.setdefault(slot, []).append(now)
        return True

    def explained(self, slot: int, running: bool, now: float) -> bool:
        """The producer's word on a consumer's death: counted unless a job ran in it."""
        waiting = self.unexplained.get(slot)
        if not waiting:
            self.early.setdefault(slot, []).append(running)
            return True
        waiting.pop(0)
        return running or self.allow(now)

    def overdue(self, now: float) -> bool:
        """Count the deaths the producer never explained; False once the limit is passed."""
        for deaths in self.unexplained.values():
            while deaths and now - deaths[0] > EXPLAIN_S:
                deaths.pop(0)
                if not self.allow(now):
                    return False
        return True
