"""From outcomes to row transitions: the retry policy (pure ``decide``) and a buffer
that writes them in one guarded statement per flush and survives database outages.

Retry policy: a run that ended in error or timeout is a failed attempt. While the task
has failed fewer than max_attempts times it goes back to ``waiting`` with run_at pushed
back (``retry``: exponential backoff with jitter, the task's own or 1 s, 2 s, 4 s, ...
capped at 5 minutes; its retry_on / discard_on; snoozes); after that it keeps its final
status and its last error. A run refused before it started (unknown task name,
arguments that do not fit the signature) is final: retrying cannot help.

A lost run (its consumer, its producer or its whole node died under it) is not an
attempt: it goes back to ``waiting``. Who is to blame is told apart by how it was lost:

- its consumer died while it ran (``Outcome.suspect``): the job may have killed it (a
  crash in C, an OOM, a kill of its parent). These count as ``kills``; a task with
  QUARANTINE_KILLS of them is quarantined: it ends in ``error`` and runs nowhere again
  until an operator retries it, so it can neither stop the node through the restart
  limit nor walk from node to node;
- its producer or node died (a rescue of a dead owner's tasks, a producer restart):
  infrastructure. These never count against the task, however many there are.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from typing import Any, TypedDict

import psycopg

from stagerunner import logs, retry, store
from stagerunner.demand import Claim
from stagerunner.protocol import TERMINAL, Outcome, Status, Task
from stagerunner.store import Finish

log = logging.getLogger(__name__)

QUARANTINE_KILLS = 3
FLUSH_AFTER_S = 0.02  # outcomes wait at most this long for a batch to fill
FLUSH_BATCH = 64
BUSY_RETRY_S = 0.5  # an outcome whose row another transaction holds locked is tried again


class _Run(TypedDict):
    """What a Finish says about the run itself: the consumer slot and the deadline it had."""

    consumer: int | None
    deadline_s: float | None


def decide(outcome: Outcome, *, lost: int, max_attempts: int, kills: int = 0,
           consumer: int | None = None) -> Finish:
    """The row transition for one outcome; `lost` and `kills` are the task's counts at claim
    time, `consumer` the slot that ran it. (Built in one go: ``dataclasses.replace`` on the
    result would cost the producer more than deciding does, ~4.6 against ~2.6 µs.)"""
    o = outcome
    run: _Run = {"consumer": consumer, "deadline_s": o.deadline_s or None}
    if o.lost:
        return _lost(o, kills, run)
    if o.status in (Status.SUCCESS, Status.CANCELLED):
        return Finish(o.task_id, o.attempt, o.status, o.status, o.result, o.error, 0.0, 0,
                      o.runtime_ms, **run)
    if o.status not in TERMINAL:
        raise ValueError(f"an outcome cannot report {o.status}")
    d = retry.decide(o, failures=o.attempt - lost, max_attempts=max_attempts)
    failure = None if d.refund else o.error  # a snooze is not a failure: no history entry
    return Finish(o.task_id, o.attempt, d.status, d.reported, None, failure, d.delay_s, 0,
                  o.runtime_ms, refund=d.refund, **run)


def _lost(o: Outcome, kills: int, run: _Run) -> Finish:
    """Back to waiting without spending an attempt -- after a backoff if its consumer died
    under it -- unless that has now happened QUARANTINE_KILLS times."""
    if not o.suspect:
        return Finish(o.task_id, o.attempt, Status.WAITING, "lost", None, o.error, 0.0, lost=1,
                      runtime_ms=o.runtime_ms, **run)
    if kills + 1 >= QUARANTINE_KILLS:
        error = (f"{o.error}; quarantined: its consumer died while it ran {kills + 1} times, "
                 "so it will not run again until it is retried")
        return Finish(o.task_id, o.attempt, Status.ERROR, "lost", None, error, lost=1, kills=1,
                      runtime_ms=o.runtime_ms, **run)
    return Finish(o.task_id, o.attempt, Status.WAITING, "lost", None, o.error,
                  retry.DEFAULT.delay(kills + 1), lost=1, kills=1, runtime_ms=o.runtime_ms, **run)


@dataclass
class Completer:
    """Buffers decided transitions, and unstarted tasks to hand back, until they are
    written; nothing is dropped on error."""

    owner: str
    pending: list[Finish] = field(default_factory=list)
    since: float = 0.0  # monotonic time the oldest pending outcome arrived
    releases: list[Claim] = field(default_factory=list)
    release_at: float = 0.0  # monotonic; releases whose rows were locked wait until then

    def release(self, claims: list[Claim]) -> None:
        self.releases += claims

    def write(self, conn: psycopg.Connection[Any], now: float, force: bool = False,
              beside: Callable[[], object] | None = None,
              writer: Callable[[], psycopg.Connection[Any]] | None = None) -> None:
        """Hand back what is to be handed back, then write outcomes if a batch is due (or
        `force`). With `beside` (the producer's claim), every outcome is written on the
        connection `writer` gives (required with it), from a thread, while `beside` runs on
        `conn`: neither waits for the other."""
        if self.releases and (force or now >= self.release_at):
            self._release(conn, now)
        if beside is not None:
            assert writer is not None, "an outcome write beside a claim needs its connection"
            with self._flushing(writer):
                beside()
        elif force or self.due(now):
            self.flush(conn)

    def _release(self, conn: psycopg.Connection[Any], now: float) -> None:
        batch, self.releases = self.releases, []
        try:
            _, busy = store.release_tasks(conn, owner=self.owner, tasks=[c.task for c in batch])
        except psycopg.Error:
            self.releases = batch + self.releases  # kept for the next connection
            raise
        locked = {t.id for t in busy}
        if locked:  # rows someone holds locked: again in a moment, not at once
            self.releases = [c for c in batch if c.task.id in locked] + self.releases
            self.release_at = now + BUSY_RETRY_S
        if len(batch) > len(locked):
            log.info("unstarted tasks handed back", extra={"event": "task.released",
                                                           "count": len(batch) - len(locked)})

    def release_unheld(self, conn: psycopg.Connection[Any], held: list[Task]) -> None:
        """After a reconnect: hand back every claim of ours that is neither `held` nor
        waiting here for its outcome (a claim whose rows never reached us); one whose row
        someone holds locked, later."""
        released, busy = store.release_tasks(conn, owner=self.owner, unheld=True,
                                             tasks=held + self.unwritten())
        self.release([Claim(t) for t in busy])
        if released:
            log.warning("claims whose result never reached us were handed back", extra={
                "event": "task.released", "count": len(released)})

    def settle(self, conn: psycopg.Connection[Any], until: float,
               tick: Callable[[float], object] = lambda now: None) -> None:
        """At a stop: what waits for rows someone holds locked is tried again every
        BUSY_RETRY_S until `until` (monotonic), calling `tick` between tries (the
        producer's word to its watchdog); what is left then, a live node's rescue hands
        back (a success written late is better than one run twice)."""
        while (self.pending or self.releases) and time.monotonic() < until:
            time.sleep(max(0.0, min(self.wake_at(), until) - time.monotonic()))
            tick(time.monotonic())
            self.write(conn, time.monotonic(), force=True)

    def wake_at(self) -> float:
        """When there is writing to do next (monotonic): a batch of outcomes, or releases
        that found their rows locked."""
        times = [self.flush_at()] if self.pending else []
        return min(times + ([self.release_at] if self.releases else []), default=float("inf"))

    def add(self, outcome: Outcome, *, lost: int, max_attempts: int, kills: int = 0,
            consumer: int | None = None) -> Finish:
        finish = decide(outcome, lost=lost, max_attempts=max_attempts, kills=kills,
                        consumer=consumer)
        if not self.pending:
            self.since = time.monotonic()
        self.pending.append(finish)
        return finish

    def unwritten(self) -> list[Task]:
        """The tasks whose outcomes wait here (a reconnect must not hand them back)."""
        return [Task(f.task_id, f.attempt, "", "") for f in self.pending]

    def due(self, now: float) -> bool:
        """Time to write: the batch is full or its oldest outcome waited long enough."""
        return bool(self.pending) and (len(self.pending) >= FLUSH_BATCH or now >= self.flush_at())

    def flush_at(self) -> float:
        """When the oldest pending outcome will have waited long enough (monotonic)."""
        return self.since + FLUSH_AFTER_S

    def flush(self, conn: psycopg.Connection[Any]) -> int:
        """Write everything pending (``write_finishes``); connection errors propagate with
        the buffer intact."""
        if not self.pending:
            return 0
        batch = self.pending
        return self._written(batch, write_finishes(conn, self.owner, batch))

    @contextlib.contextmanager
    def _flushing(self, writer: Callable[[], psycopg.Connection[Any]]) -> Iterator[None]:
        """Write everything pending on the connection `writer` gives (asked only if there is
        something to write) from a thread of its own while the body runs (the producer's
        claim, on its other connection), and take the result at its end."""
        if not self.pending:
            yield
            return
        batch = self.pending
        writing = _writer().submit(write_finishes, writer(), self.owner, batch)
        try:
            yield
        finally:
            self._written(batch, writing.result())

    def _written(self, batch: list[Finish], written: dict[int, str]) -> int:
        busy = {i for i, status in written.items() if status == store.BUSY}
        self.pending = [f for f in batch if f.task_id in busy]
        if busy:  # rows someone holds locked: again in a moment, not at once
            self.since = time.monotonic() + BUSY_RETRY_S - FLUSH_AFTER_S
        for f in batch:
            if f.task_id in busy:
                continue
            if f.task_id not in written:
                log.warning("stale outcome ignored: the task was rescued or re-claimed meanwhile",
                            extra={"event": "task.stale_outcome", "task_id": f.task_id,
                                   "attempt": f.attempt, "status": str(f.status)})
            else:
                _log_finish(f, written[f.task_id])
        return len(written) - len(busy)


@functools.cache
def _writer() -> ThreadPoolExecutor:
    return ThreadPoolExecutor(1, thread_name_prefix="outcomes")


def write_finishes(conn: psycopg.Connection[Any], owner: str, batch: list[Finish]
                   ) -> dict[int, str]:
    """Write `batch` (the producer's outcomes, a rescue's); {id: status now} of the rows
    written. Connection errors propagate; a row the database refuses (bad data, a counter
    at its limit) is isolated and ends in error instead of blocking every row behind it."""
    try:
        return store.finish_tasks(conn, owner=owner, finishes=batch)
    except psycopg.OperationalError:
        raise
    except (psycopg.DatabaseError, ValueError):  # ValueError: a value psycopg cannot send
        pass
    written: dict[int, str] = {}
    for f in batch:
        try:
            written |= store.finish_tasks(conn, owner=owner, finishes=[f])
        except psycopg.OperationalError:
            raise
        except (psycopg.DatabaseError, ValueError) as exc:
            written |= _refused(conn, owner, f, exc)
    return written


def _refused(conn: psycopg.Connection[Any], owner: str, f: Finish, exc: Exception
             ) -> dict[int, str]:
    """The task ends in error, its counters as they are (whatever was refused may be one of
    them). If even that is refused, its outcome is dropped rather than every later outcome
    blocked behind it: the row stays running until its node stops and a live node rescues
    it."""
    why = str(exc).strip()
    log.error("outcome refused by the database; the task ends in error",
              extra={"event": "task.unstorable", "task_id": f.task_id, "error": why[:300]})
    refused = replace(f, status=Status.ERROR, result=None, delay_s=0.0, lost=0, kills=0,
                      refund=0, error=f"outcome could not be stored: {why[:500]}")
    try:
        return store.finish_tasks(conn, owner=owner, finishes=[refused])
    except psycopg.OperationalError:
        raise
    except (psycopg.DatabaseError, ValueError) as again:
        log.error("the task's row refuses even an error; its outcome is dropped",
                  extra={"event": "task.unstorable", "task_id": f.task_id,
                         "error": str(again).strip()[:300]})
        return {}


def _log_finish(f: Finish, status: str) -> None:
    """One line per transition written; `status` is the row's status now (a retry of a
    task whose cancel was requested ended cancelled)."""
    level = logging.INFO if status in (Status.SUCCESS, Status.CANCELLED) else logging.WARNING
    if not log.isEnabledFor(level):
        return
    event = {Status.SUCCESS: "task.finished", Status.WAITING: "task.retrying",
             Status.TIMEOUT: "task.timed_out", Status.CANCELLED: "task.cancelled"}.get(
        Status(status), "task.failed")
    if f.reported in ("lost", "snoozed") and status != Status.CANCELLED:
        event = f"task.{f.reported}"
    logs.line(log, level, event.replace("task.", "task ").replace("_", " "),
              {"event": event, "task_id": f.task_id, "attempt": f.attempt, "status": status,
               "reported": str(f.reported), "runtime_ms": round(f.runtime_ms, 2),
               **({"error": _first_line(f.error)} if f.error else {})})


def _first_line(error: str) -> str:
    lines = [line for line in error.strip().splitlines() if line.strip()]
    return lines[-1] if lines else error
