"""Periodic tasks on the producer's timer: at each cron tick every live node tries to
enqueue the task, and the guarded insert lets exactly one succeed (none lost while any
node is up). At start the most recent tick of the last day is tried too, so a tick that
fell while every node was down runs once when one comes back.

Whether a tick is due is decided by the database's clock, read at every step: a node
whose own clock is minutes off neither fires a tick early nor misses one. Its own clock
only times the wait until the next step, corrected by the skew measured at the last one.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import TYPE_CHECKING, Any

from stagerunner import cron, store

if TYPE_CHECKING:
    import psycopg

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Periodic:
    name: str
    expr: str
    queue: str = "default"
    priority: int = 0
    max_attempts: int = 3
    timeout_s: float | None = None


@dataclass
class Scheduler:
    entries: tuple[Periodic, ...]
    due_ticks: dict[str, datetime] = field(default_factory=dict)
    crons: dict[str, cron.Cron] = field(default_factory=dict)
    skew_s: float = 0.0  # the database's clock minus ours, at the last step

    def __post_init__(self) -> None:
        for p in self.entries:
            self.crons[p.name] = cron.parse(p.expr)

    def step(self, conn: psycopg.Connection[Any]) -> list[int]:
        """Enqueue every tick that is due by the database's clock (unless another node
        did); the new task ids."""
        now = store.database_now(conn)
        self.skew_s = (now - datetime.now(timezone.utc)).total_seconds()
        if not self.due_ticks:  # first step: the latest tick of the last day, else the next
            for name, parsed in self.crons.items():
                self.due_ticks[name] = parsed.last_at_or_before(now) or parsed.next_after(now)
        made = []
        for p in self.entries:
            tick = self.due_ticks[p.name]
            if tick > now:
                continue
            task_id = store.enqueue_periodic(conn, name=p.name, tick=tick, queue=p.queue,
                                             priority=p.priority, max_attempts=p.max_attempts,
                                             timeout_s=p.timeout_s)
            if task_id is not None:
                made.append(task_id)
                log.info("periodic task enqueued", extra={"event": "task.scheduled",
                                                          "task_id": task_id, "task": p.name,
                                                          "tick": tick.isoformat()})
            self.due_ticks[p.name] = self.crons[p.name].next_after(tick)
        return made

    def next_at(self, now: float) -> float:
        """The monotonic time of the soonest tick (`now` is the monotonic clock's now); at
        once before the first step, which reads the database's clock."""
        if not self.due_ticks:
            return now
        database_now = datetime.now(timezone.utc) + timedelta(seconds=self.skew_s)
        wait = (min(self.due_ticks.values()) - database_now).total_seconds()
        return now + max(wait, 0.0)
