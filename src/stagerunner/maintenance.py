"""The producer's periodic services (River calls them maintenance services), each on its
own timer in ``wakeups``: the heartbeat with the rescue of dead owners' tasks
(``rescuer``), cron ticks (``scheduler``) and retention (``pruner``). While the node
stops, only the heartbeat and rescue go on."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from stagerunner import store
from stagerunner.pruner import Pruner
from stagerunner.rescuer import Rescuer
from stagerunner.scheduler import Scheduler
from stagerunner.wakeups import Wakeups

if TYPE_CHECKING:
    import psycopg


@dataclass
class Maintenance:
    rescuer: Rescuer
    scheduler: Scheduler | None
    pruner: Pruner | None
    heartbeat_interval: float

    def start(self, wakeups: Wakeups, now: float) -> None:
        if self.scheduler is not None:
            wakeups.schedule("cron", self.scheduler.next_at(now))

    def beat_and_rescue(self, conn: psycopg.Connection[Any], wakeups: Wakeups, now: float) -> int:
        """Heartbeat, then hand back dead owners' tasks; how many were rescued."""
        wakeups.schedule("rescue", now + self.heartbeat_interval)
        self.rescuer.beat(conn)
        return len(self.rescuer.rescue(conn))

    def run_due(self, conn: psycopg.Connection[Any], wakeups: Wakeups, now: float,
                queues: tuple[str, ...]) -> None:
        """Cron and retention, if their time has come."""
        if self.scheduler is not None and wakeups.due("cron", now):
            if self.scheduler.step(conn):
                wakeups.tasks_notified(queues)
            wakeups.schedule("cron", self.scheduler.next_at(now))
        if self.pruner is not None and wakeups.due("prune", now):
            wakeups.schedule("prune", now + self.pruner.step(conn))

    def resync(self, conn: psycopg.Connection[Any], wakeups: Wakeups, now: float,
               owner: str) -> list[int]:
        """For a producer without LISTEN, once a poll: re-read the pauses, and return our
        running tasks whose cancel was requested (a NOTIFY would have named them)."""
        if not wakeups.due("resync", now):
            return []
        wakeups.schedule("resync", now + wakeups.poll_interval)
        wakeups.pauses_changed()
        return store.find_cancel_requests(conn, owner=owner)
