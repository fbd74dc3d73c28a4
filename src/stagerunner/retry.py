"""Retry policy (pure): what becomes of a task after a run that did not succeed.

- A failed attempt (error or timeout) goes back to ``waiting`` while the task has failed
  fewer than ``max_attempts`` times, after an exponential backoff with jitter (the task's
  own ``Backoff``, else ``DEFAULT``: 1 s, 2 s, 4 s ... capped at 5 minutes, each within
  +/-20 %, so tasks that failed together do not all come back in the same instant).
- The job child classifies the exception against the task's ``retry_on`` / ``discard_on``
  (``Outcome.retry`` False: never again) and reports a ``Snooze`` (``Outcome.snooze_s``):
  the task goes back to ``waiting`` for that long without spending an attempt.
- A run refused before it started (``Outcome.final``) keeps its status.

The random source is a parameter, so the jitter is deterministic in tests.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from stagerunner.protocol import Outcome, Status

Random = Callable[[], float]


@dataclass(frozen=True, slots=True)
class Backoff:
    """Exponential backoff: ``base_s * 2**(failures - 1)``, capped at ``max_s``, then
    spread uniformly by +/- ``jitter`` (a fraction) and capped again."""

    base_s: float = 1.0
    max_s: float = 300.0
    jitter: float = 0.2

    def __post_init__(self) -> None:
        if not (self.base_s >= 0 and self.max_s >= self.base_s and 0 <= self.jitter <= 1):
            raise ValueError(f"bad backoff {self}: need 0 <= base_s <= max_s and 0 <= jitter <= 1")

    def delay(self, failures: int, rand: Random = random.random) -> float:
        plain = min(self.base_s * 2.0 ** max(failures - 1, 0), self.max_s)
        return min(plain * (1 - self.jitter + 2 * self.jitter * rand()), self.max_s)

    def wire(self) -> tuple[float, float, float]:
        return (self.base_s, self.max_s, self.jitter)


DEFAULT = Backoff()


SNOOZE_MAX_S = 30 * 86400.0


class Snooze(Exception):
    """Raised by a job: run this task again in `seconds` (at most 30 days), without
    spending an attempt."""

    def __init__(self, seconds: float) -> None:
        if not 0 <= float(seconds) <= SNOOZE_MAX_S:
            raise ValueError(f"Snooze needs 0 to {SNOOZE_MAX_S:g} seconds (30 days), "
                             f"got {seconds!r}")
        super().__init__(f"snoozed for {float(seconds):g} s")
        self.seconds = float(seconds)


@dataclass(frozen=True, slots=True)
class Decision:
    status: Status  # the row's new status
    reported: str  # what the run reported (the errors history and the log say it)
    delay_s: float = 0.0
    refund: int = 0  # attempts given back (a snooze)


def decide(o: Outcome, *, failures: int, max_attempts: int, rand: Random = random.random
           ) -> Decision:
    """The transition after a run that ended in error or timeout (`failures` counts the
    failed attempts, this one included)."""
    if o.snooze_s is not None and o.status is Status.ERROR:
        return Decision(Status.WAITING, "snoozed", max(0.0, o.snooze_s), refund=1)
    if failures < max_attempts and not o.final and o.retry is not False:
        policy = Backoff(*o.backoff) if o.backoff else DEFAULT
        return Decision(Status.WAITING, o.status, policy.delay(failures, rand))
    return Decision(o.status, o.status)


def classify(exc: BaseException, retry_on: tuple[type[BaseException], ...],
             discard_on: tuple[type[BaseException], ...]) -> dict[str, object]:
    """In the job child: what the exception means for the next attempt, as reply fields."""
    if isinstance(exc, Snooze):
        return {"snooze": exc.seconds}
    if discard_on and isinstance(exc, discard_on):
        return {"retry": False}
    if retry_on and not isinstance(exc, retry_on):
        return {"retry": False}
    return {}


def from_reply(fields: dict[str, Any]) -> dict[str, Any]:
    """Outcome fields from what a job child's reply said (untrusted: anything that is not
    a bool retry or a snooze Snooze itself accepts is ignored)."""
    out: dict[str, Any] = {}
    if isinstance(fields.get("retry"), bool):
        out["retry"] = fields["retry"]
    snooze = fields.get("snooze")
    if isinstance(snooze, (int, float)) and not isinstance(snooze, bool) and 0 <= snooze <= SNOOZE_MAX_S:
        out["snooze_s"] = float(snooze)
    return out
