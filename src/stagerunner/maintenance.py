"""The producer's periodic services (River calls them maintenance services), each on its
own timer in ``wakeups``: the heartbeat with the rescue of dead owners' tasks
(``rescuer``) and cron ticks (``scheduler``); and, for a reloaded node's new owner, the
task catalog of the code it runs now (``catalog.reloaded``). While the node stops, only the
heartbeat and rescue go on. (Retention runs beside the producer, in a thread of the supervisor:
``pruner``.)"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from stagerunner import catalog
from stagerunner.registry import Spec
from stagerunner.rescuer import Rescuer
from stagerunner.scheduler import Scheduler
from stagerunner.wakeups import Wakeups

if TYPE_CHECKING:
    import psycopg


@dataclass
class Maintenance:
    rescuer: Rescuer
    scheduler: Scheduler | None
    heartbeat_interval: float
    unpublished: list[Spec] | None = None  # published when the owner registers

    def start(self, wakeups: Wakeups, now: float) -> None:
        if self.scheduler is not None:
            wakeups.schedule("cron", self.scheduler.next_at(now))

    def beat(self, conn: psycopg.Connection[Any], wakeups: Wakeups, now: float,
             registered: bool, consumers: int = 0,
             info: dict[str, Any] | None = None) -> float | None:
        """Extend the lease (or, for an owner that may, take a fresh one), recording
        `consumers` and `info` on the node's row; the seconds it has left, or None if it
        had run out."""
        wakeups.schedule("rescue", now + self.heartbeat_interval)
        if registered:
            return self.rescuer.beat(conn, consumers, info)
        left = self.rescuer.register(conn, consumers, info)
        if self.unpublished is not None:
            catalog.publish(conn, self.rescuer.node, self.unpublished)
            self.unpublished = None
        return left

    def rescue(self, conn: psycopg.Connection[Any]) -> int:
        """Hand back dead owners' tasks; how many."""
        return len(self.rescuer.rescue(conn))

    def run_due(self, conn: psycopg.Connection[Any], wakeups: Wakeups, now: float,
                queues: tuple[str, ...]) -> None:
        """Cron ticks, if their time has come."""
        if self.scheduler is not None and wakeups.due("cron", now):
            if self.scheduler.step(conn):
                wakeups.tasks_notified(queues)
            wakeups.schedule("cron", self.scheduler.next_at(now))
