"""Everything that crosses a pipe between stages.

Rules (GenStage's demand protocol, written for OS processes):

- A consumer MUST announce how many tasks it can take with ``Demand(n)``; an
  ``Outcome`` MAY carry more demand so that one message per finished job is enough.
- The producer MUST NOT send a consumer more tasks than its outstanding credits; a
  consumer that receives more logs an error (``consumer.excess_tasks``) and still runs
  them in order: they are claimed, and dropping them would lose them.
- A consumer MUST run the tasks it holds in the order received and report exactly one
  ``Outcome`` per task, echoing the task's attempt so stale reports can be recognised.
- On ``Stop`` a consumer MUST finish the job it is running (within its deadline), then
  send ``Bye`` listing the tasks it never started, and exit.
- A consumer whose job has run for ``return_after_s`` MUST hand back the tasks it
  prefetched behind it with ``Return`` and withhold that demand until the job ends (it
  adds it to the job's ``Outcome``): no task waits behind a long job.
- A consumer MUST NOT start a job unless it holds a ``Lease`` that has not run out, and
  MUST arm a kernel timer that kills it (and so its job) when the lease runs out while a
  job runs; the producer MUST send a fresh ``Lease`` after every heartbeat it writes.
- Between the supervisor and the producer: ``Attach`` announces a (re)started
  consumer, whose pipe follows as a passed file descriptor; ``Replace`` asks the
  supervisor to kill and restart a consumer that stopped answering; the producer MUST
  send ``Alive`` (with its counters, for the metrics the supervisor serves) from its loop
  at least every half heartbeat interval, or be killed.

Messages travel as compact JSON bytes (``send_bytes``), never pickled: this keeps the
per-job path free of the process library's pickler, and nothing read from the
database is ever unpickled.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from enum import StrEnum

from stagerunner import jsontext


class Status(StrEnum):
    """Task states; the values are the SQL enum labels verbatim."""

    WAITING = "waiting"
    RUNNING = "running"
    SUCCESS = "success"
    ERROR = "error"
    TIMEOUT = "timeout"
    CANCELLED = "cancelled"


TERMINAL = frozenset({Status.SUCCESS, Status.ERROR, Status.TIMEOUT, Status.CANCELLED})


@dataclass(frozen=True, slots=True)
class Task:
    id: int
    attempt: int
    name: str
    args: str  # JSON text, decoded only inside the job child
    timeout_s: float | None = None
    queue: str = "default"
    max_attempts: int = 1  # for the job context (stagerunner.current())
    enqueued_at: float | None = None  # epoch seconds


@dataclass(frozen=True, slots=True)
class Demand:
    """consumer -> producer: n more tasks may be sent."""

    n: int


@dataclass(frozen=True, slots=True)
class Batch:
    """producer -> consumer: claimed tasks, never more than the credits asked for, to run
    in this order."""

    tasks: tuple[Task, ...]


@dataclass(frozen=True, slots=True)
class Outcome:
    """consumer -> producer: how one run ended (and, in `demand`, new credits)."""

    task_id: int
    attempt: int
    status: Status
    runtime_ms: float
    result: str | None = None  # JSON text produced in the child
    error: str | None = None  # traceback or reason
    demand: int = 0
    lost: bool = False  # the run did not end for a reason of its own (not an attempt)
    final: bool = False  # retrying cannot help (unknown task, bad arguments)
    suspect: bool = False  # lost with its consumer dead under it: the job may be to blame
    deadline_s: float = 0.0  # the deadline the run was given (0: it never started)
    retry: bool | None = None  # False: the task's retry_on / discard_on rule out another try
    snooze_s: float | None = None  # the job asked to run again later, spending no attempt
    backoff: tuple[float, float, float] | None = None  # the task's own retry.Backoff

    def carrying(self, demand: int, backoff: tuple[float, float, float] | None = None
                 ) -> Outcome:
        """This outcome with new demand credits (and the task's own backoff, when it has
        one): built field by field, as ``dataclasses.replace`` costs ~4 µs a task."""
        return Outcome(self.task_id, self.attempt, self.status, self.runtime_ms, self.result,
                       self.error, demand, self.lost, self.final, self.suspect, self.deadline_s,
                       self.retry, self.snooze_s, self.backoff if backoff is None else backoff)


@dataclass(frozen=True, slots=True)
class Stop:
    """supervisor -> producer -> consumers: finish the running job, start no other."""


@dataclass(frozen=True, slots=True)
class Bye:
    """consumer -> producer: stopped; these tasks were never started (the producer hands
    them back to waiting)."""

    unstarted: tuple[int, ...]


@dataclass(frozen=True, slots=True)
class Return:
    """consumer -> producer: my job is taking long; these prefetched tasks were never
    started (the producer hands them back, so an idle consumer anywhere can run them)."""

    unstarted: tuple[int, ...]


@dataclass(frozen=True, slots=True)
class Cancel:
    """producer -> consumer: kill this task's job if it runs, drop it if it waits."""

    task_id: int


@dataclass(frozen=True, slots=True)
class Lease:
    """producer -> consumer: jobs may run until `until` (CLOCK_BOOTTIME seconds): the
    node's database lease, less a margin. Past it, run nothing: other nodes may already
    have rescued the tasks."""

    until: float


@dataclass(frozen=True, slots=True)
class Attach:
    """supervisor -> producer: a (re)started consumer; its pipe follows as an fd."""

    slot: int
    queue: str
    pid: int


@dataclass(frozen=True, slots=True)
class Alive:
    """producer -> supervisor: the loop is turning (sent every half heartbeat)."""

    held: int  # tasks the producer's consumers hold right now
    stats: dict[str, object] | None = None  # the producer's counters (metrics.Stats)


@dataclass(frozen=True, slots=True)
class Died:
    """producer -> supervisor: a consumer's pipe closed; `running` if a job ran in it (its
    death is then blamed on that task, not counted against the node's restart limit)."""

    slot: int
    running: bool


@dataclass(frozen=True, slots=True)
class Replace:
    """producer -> supervisor: kill this consumer and start another."""

    slot: int
    reason: str


Message = (Demand | Batch | Outcome | Stop | Bye | Return | Cancel | Lease | Attach | Replace | Alive
           | Died)


class ProtocolError(ValueError):
    """A message could not be decoded."""


def encode(message: Message) -> bytes:
    match message:
        case Demand(n=n):
            wire: list[object] = ["D", n]
        case Outcome() as o:
            wire = ["O", o.task_id, o.attempt, o.status.value, o.runtime_ms, o.result, o.error,
                    o.demand, o.lost, o.final, o.suspect, o.deadline_s, o.retry, o.snooze_s,
                    o.backoff]
        case Batch(tasks=tasks):
            wire = ["B", [[t.id, t.attempt, t.name, t.args, t.timeout_s, t.queue, t.max_attempts,
                           t.enqueued_at] for t in tasks]]
        case Stop():
            wire = ["S"]
        case Bye(unstarted=ids):
            wire = ["Y", list(ids)]
        case Return(unstarted=ids):
            wire = ["U", list(ids)]
        case Cancel(task_id=task_id):
            wire = ["C", task_id]
        case Lease(until=until):
            wire = ["L", until]
        case Attach(slot=slot, queue=queue, pid=pid):
            wire = ["A", slot, queue, pid]
        case Replace(slot=slot, reason=reason):
            wire = ["R", slot, reason]
        case Died(slot=slot, running=running):
            wire = ["X", slot, running]
        case Alive(held=held, stats=stats):
            wire = ["K", held, stats]
        case _:
            raise ProtocolError(f"cannot encode {message!r}")
    return jsontext.compact(wire).encode()


def decode(data: bytes) -> Message:
    try:
        wire = json.loads(data)
        match wire:
            case ["D", int(n)]:
                return Demand(n)
            case ["O", task_id, attempt, status, runtime, result, error, demand, lost, final,
                  *later]:  # fields added later default, so an older stage's still decode
                suspect, deadline_s, retry, snooze, backoff = [*later, False, 0.0, None, None,
                                                               None][:5]
                return Outcome(task_id, attempt, Status(status), runtime, result, error, demand,
                               lost, final, suspect, deadline_s, retry, snooze,
                               tuple(backoff) if backoff else None)
            case ["B", list(rows)]:
                return Batch(tuple(Task(*row) for row in rows))
            case ["S"]:
                return Stop()
            case ["Y", list(ids)]:
                return Bye(tuple(ids))
            case ["U", list(ids)]:
                return Return(tuple(ids))
            case ["C", int(task_id)]:
                return Cancel(task_id)
            case ["L", int(until) | float(until)]:
                return Lease(float(until))
            case ["A", int(slot), str(queue), int(pid)]:
                return Attach(slot, queue, pid)
            case ["R", int(slot), str(reason)]:
                return Replace(slot, reason)
            case ["X", int(slot), bool(running)]:
                return Died(slot, running)
            case ["K", int(held), dict(stats)]:
                return Alive(held, stats)
            case ["K", int(held), None]:
                return Alive(held)
    except (ValueError, TypeError) as exc:
        raise ProtocolError(f"undecodable message: {exc}") from None
    raise ProtocolError(f"unknown message: {data[:200]!r}")
