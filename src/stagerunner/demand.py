"""Demand bookkeeping: pure, no pipes, no database (GenStage's dispatchers).

``Ledger`` is the DemandDispatcher: each consumer slot has credits it asked for and
the tasks it holds (as ``Claim``: the task plus what deciding its outcome needs), in
the order it received them. The producer asks the ledger how
many tasks a queue can take (``unmet``), claims at most that many, and lets
``assign`` split them so no consumer gets more than it asked for; leftovers go back
to the caller to be released.

``Broadcast`` is the BroadcastDispatcher of the counter demo: an event is emitted
only when every consumer has demand, and every consumer receives every event.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Generic, TypeVar

from stagerunner.protocol import Task

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class Claim:
    """A claimed task and its row's counters at claim time (the completer decides with
    them: lost runs so far, the retry budget)."""

    task: Task
    lost: int = 0
    max_attempts: int = 1
    kills: int = 0


@dataclass(slots=True)
class Slot:
    queue: str
    credits: int = 0
    held: list[Claim] = field(default_factory=list)
    heard_at: float = 0.0  # monotonic time of the last message from this consumer
    # It handed tasks back from behind a long job: nothing more goes to it (its credits
    # wait) until it reports an outcome, or each task it got would come back 0.2 s later,
    # be released and claimed for it again, as long as it had credits.
    busy: bool = False


class Ledger:
    def __init__(self) -> None:
        self.slots: dict[int, Slot] = {}

    def add(self, slot: int, queue: str, now: float = 0.0) -> None:
        if slot in self.slots:
            raise ValueError(f"slot {slot} is already attached")
        self.slots[slot] = Slot(queue=queue, heard_at=now)

    def ask(self, slot: int, n: int, now: float = 0.0) -> None:
        if n < 0:
            raise ValueError(f"demand must not be negative, got {n}")
        s = self.slots[slot]
        s.credits += n
        s.heard_at = now

    def _open(self, queue: str) -> dict[int, Slot]:
        """The queue's slots that may be given tasks now."""
        return {i: s for i, s in self.slots.items() if s.queue == queue and not s.busy}

    def unmet(self, queue: str) -> int:
        return sum(s.credits for s in self._open(queue).values())

    def worth_claiming(self, queue: str) -> bool:
        """Claim now, or wait to batch? Now when a consumer of the queue has nothing left to
        run, or half of the queue's window is free (GenStage's min_demand)."""
        slots = self._open(queue).values()
        unmet = sum(s.credits for s in slots)
        if unmet == 0:
            return False
        if any(s.credits and not s.held for s in slots):
            return True
        capacity = sum(s.credits + len(s.held) for s in slots)
        return unmet * 2 >= capacity

    def assign(self, queue: str, tasks: Sequence[Claim], now: float = 0.0
               ) -> tuple[dict[int, list[Claim]], list[Claim]]:
        """Give each task to the slot with the most credits left; return (plan, leftover)."""
        plan: dict[int, list[Claim]] = {}
        hungry = [i for i, s in self._open(queue).items() if s.credits > 0]
        pending = list(tasks)
        while pending and hungry:
            slot = max(hungry, key=lambda i: self.slots[i].credits)
            s = self.slots[slot]
            task = pending.pop(0)
            s.credits -= 1
            s.held.append(task)
            if not plan.get(slot):
                s.heard_at = max(s.heard_at, now)  # the silence clock starts at dispatch
            plan.setdefault(slot, []).append(task)
            if s.credits == 0:
                hungry.remove(slot)
        return plan, pending

    def finished(self, slot: int, task_id: int, attempt: int) -> Claim | None:
        """Forget a task the slot reported on; None if the slot did not hold it."""
        s = self.slots[slot]
        s.busy = False
        for i, claim in enumerate(s.held):
            if claim.task.id == task_id and claim.task.attempt == attempt:
                return s.held.pop(i)
        return None

    def handed_back(self, slot: int, task_ids: Iterable[int]) -> list[Claim]:
        """Tasks a consumer returned from behind its long job (``Return``)."""
        self.slots[slot].busy = True
        return self.take_back(slot, task_ids)

    def take_back(self, slot: int, task_ids: Iterable[int]) -> list[Claim]:
        """Tasks a consumer returned unstarted."""
        wanted = set(task_ids)
        s = self.slots[slot]
        back = [c for c in s.held if c.task.id in wanted]
        s.held = [c for c in s.held if c.task.id not in wanted]
        return back

    def drop(self, slot: int) -> tuple[Claim | None, list[Claim]]:
        """Detach a dead slot: (the task it may have been running, the ones it never started)."""
        s = self.slots.pop(slot)
        if not s.held:
            return None, []
        return s.held[0], s.held[1:]

    def holder(self, task_id: int) -> int | None:
        for i, s in self.slots.items():
            if any(c.task.id == task_id for c in s.held):
                return i
        return None

    def silent(self, now: float, limit: float) -> list[int]:
        """Slots holding work that have said nothing for longer than `limit` seconds."""
        return [i for i, s in self.slots.items() if s.held and now - s.heard_at > limit]

    def held(self) -> list[Claim]:
        return [c for s in self.slots.values() for c in s.held]

    def credits(self) -> int:
        return sum(s.credits for s in self.slots.values())

    def running(self) -> int:
        """Consumers holding a task: their first one is running (or about to start)."""
        return sum(1 for s in self.slots.values() if s.held)


class Prefetched:
    """A consumer's side of demand: the tasks it holds beyond the one it runs, in order,
    and the demand it withholds after handing tasks back from behind a long job."""

    def __init__(self) -> None:
        self.tasks: deque[Task] = deque()
        self.withheld = 0

    def __len__(self) -> int:
        return len(self.tasks)

    def add(self, tasks: Iterable[Task]) -> None:
        self.tasks.extend(tasks)

    def next(self) -> Task:
        return self.tasks.popleft()

    def remove(self, task_id: int) -> Task | None:
        for task in self.tasks:
            if task.id == task_id:
                self.tasks.remove(task)
                return task
        return None

    def give_back(self, running_for: float, after: float) -> tuple[int, ...]:
        """Behind a job that has run `after` seconds, the held tasks go back (their demand
        is withheld until the job ends); the ids, or () if it is too early."""
        if running_for < after or not self.tasks:
            return ()
        self.withheld += len(self.tasks)
        return self.take_all()

    def take_all(self) -> tuple[int, ...]:
        ids = tuple(t.id for t in self.tasks)
        self.tasks.clear()
        return ids

    def job_ended(self) -> int:
        """Demand to ask for again now that the long job is over."""
        more, self.withheld = self.withheld, 0
        return more


class Broadcast(Generic[T]):
    """Every consumer gets every event; emit only as many as the least hungry can take."""

    def __init__(self, consumers: Iterable[int]) -> None:
        self.credits = {c: 0 for c in consumers}

    def ask(self, consumer: int, n: int) -> None:
        self.credits[consumer] += n

    def unmet(self) -> int:
        return min(self.credits.values(), default=0)

    def assign(self, events: Sequence[T]) -> dict[int, list[T]]:
        n = min(len(events), self.unmet())
        for c in self.credits:
            self.credits[c] -= n
        return {c: list(events[:n]) for c in self.credits}
