"""From outcomes to row transitions: the retry policy (pure ``decide``) and a buffer
that writes them in one guarded statement per flush and survives database outages.

Retry policy: a run that ended in error or timeout is a failed attempt. While the task
has failed fewer than max_attempts times it goes back to ``waiting`` with run_at pushed
back (``retry``: exponential backoff with jitter, the task's own or 1 s, 2 s, 4 s, ...
capped at 5 minutes; its retry_on / discard_on; snoozes); after that it keeps its final
status and its last error. A run lost for reasons that were not the job's (its
consumer or node died under it) is not an attempt: it goes back to ``waiting``, unless
the task has now been lost LOST_LIMIT times, which points at a job that kills its own
consumer; then it ends in ``error``. A run refused before it started (unknown task name,
arguments that do not fit the signature) is final: retrying cannot help.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field, replace
from typing import Any

import psycopg

from stagerunner import retry, store
from stagerunner.protocol import TERMINAL, Outcome, Status
from stagerunner.store import Finish

log = logging.getLogger(__name__)

LOST_LIMIT = 3
BACKOFF_BASE_S = 1.0
BACKOFF_MAX_S = 300.0


def backoff(failures: int) -> float:
    """Seconds to wait before the next attempt after `failures` failed attempts (>= 1)."""
    return min(BACKOFF_BASE_S * 2 ** max(failures - 1, 0), BACKOFF_MAX_S)


def decide(outcome: Outcome, *, lost: int, max_attempts: int, lost_backoff: bool = True
           ) -> Finish:
    """The row transition for one outcome. `lost` is the task's lost count at claim time;
    a lost run goes back with a backoff unless `lost_backoff` is off (a rescue)."""
    o = outcome
    if o.lost:
        gone = lost + 1
        if gone >= LOST_LIMIT:
            error = f"{o.error}; lost {gone} times, giving up"
            return Finish(o.task_id, o.attempt, Status.ERROR, "lost", None, error, 0.0, 1, o.runtime_ms)
        return Finish(o.task_id, o.attempt, Status.WAITING, "lost", None, o.error,
                      backoff(gone) if lost_backoff else 0.0, 1, o.runtime_ms)
    if o.status in (Status.SUCCESS, Status.CANCELLED):
        return Finish(o.task_id, o.attempt, o.status, o.status, o.result, o.error, 0.0, 0, o.runtime_ms)
    if o.status not in TERMINAL:
        raise ValueError(f"an outcome cannot report {o.status}")
    d = retry.decide(o, failures=o.attempt - lost, max_attempts=max_attempts)
    failure = None if d.refund else o.error  # a snooze is not a failure: no history entry
    return Finish(o.task_id, o.attempt, d.status, d.reported, None, failure, d.delay_s, 0,
                  o.runtime_ms, d.refund)


@dataclass
class Completer:
    """Buffers decided transitions until they are written; nothing is dropped on error."""

    owner: str
    pending: list[Finish] = field(default_factory=list)
    since: float = 0.0  # monotonic time the oldest pending outcome arrived

    def add(self, outcome: Outcome, *, lost: int, max_attempts: int) -> Finish:
        finish = decide(outcome, lost=lost, max_attempts=max_attempts)
        if not self.pending:
            self.since = time.monotonic()
        self.pending.append(finish)
        return finish

    def due(self, now: float, max_age: float, max_batch: int) -> bool:
        """Time to write: the batch is full or its oldest outcome waited long enough."""
        return bool(self.pending) and (len(self.pending) >= max_batch or now - self.since >= max_age)

    def flush(self, conn: psycopg.Connection[Any]) -> int:
        """Write everything pending. Connection errors propagate with the buffer intact;
        a row the database refuses (bad data) is isolated and ends in error instead of
        blocking every outcome behind it."""
        if not self.pending:
            return 0
        batch = self.pending
        try:
            written = store.finish_tasks(conn, owner=self.owner, finishes=batch)
        except psycopg.OperationalError:
            raise
        except psycopg.DatabaseError:
            written = self._one_by_one(conn, batch)
        self.pending = []
        for f in batch:
            if f.task_id not in written:
                log.warning("stale outcome ignored: the task was rescued or re-claimed meanwhile",
                            extra={"event": "task.stale_outcome", "task_id": f.task_id,
                                   "attempt": f.attempt, "status": str(f.status)})
            else:
                _log_finish(f, written[f.task_id])
        return len(written)

    def _one_by_one(self, conn: psycopg.Connection[Any], batch: list[Finish]) -> dict[int, str]:
        written: dict[int, str] = {}
        for f in batch:
            try:
                written |= store.finish_tasks(conn, owner=self.owner, finishes=[f])
            except psycopg.OperationalError:
                raise
            except psycopg.DatabaseError as exc:
                log.error("outcome refused by the database; the task ends in error",
                          extra={"event": "task.unstorable", "task_id": f.task_id,
                                 "error": str(exc).strip()[:300]})
                refused = replace(f, status=Status.ERROR, result=None, delay_s=0.0,
                                  error=f"outcome could not be stored: {str(exc).strip()[:500]}")
                written |= store.finish_tasks(conn, owner=self.owner, finishes=[refused])
        return written


def _log_finish(f: Finish, status: str) -> None:
    """One line per transition written; `status` is the row's status now (a retry of a
    task whose cancel was requested ended cancelled)."""
    event = {Status.SUCCESS: "task.finished", Status.WAITING: "task.retrying",
             Status.TIMEOUT: "task.timed_out", Status.CANCELLED: "task.cancelled"}.get(
        Status(status), "task.failed")
    if f.reported in ("lost", "snoozed") and status != Status.CANCELLED:
        event = f"task.{f.reported}"
    level = logging.INFO if status in (Status.SUCCESS, Status.CANCELLED) else logging.WARNING
    log.log(level, event.replace("task.", "task ").replace("_", " "),
            extra={"event": event, "task_id": f.task_id, "attempt": f.attempt,
                   "status": status, "reported": str(f.reported),
                   "runtime_ms": round(f.runtime_ms, 2),
                   **({"error": _first_line(f.error)} if f.error else {})})


def _first_line(error: str) -> str:
    lines = [line for line in error.strip().splitlines() if line.strip()]
    return lines[-1] if lines else error
