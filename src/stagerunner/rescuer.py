"""Heartbeats and rescue, on the producer's timer (River's JobRescuer, Oban's Lifeline).

Every ``heartbeat_interval`` the producer stamps its owner row with the database
clock, and hands back the running tasks of owners whose stamp is older than
``node_expiry``: each as a lost run, decided by the same rule as any other outcome
(``completer.decide``) and written through the same guarded statement, as if by the dead
owner itself, so two rescuers racing write once. Because every job is killed at its
deadline and a producer that cannot beat stops its jobs (see ``link``), an expired owner
runs nothing: rescuing its tasks can never start a second live run.
"""

from __future__ import annotations

import logging
import os
import socket
from dataclasses import dataclass
from itertools import groupby
from typing import TYPE_CHECKING, Any

from stagerunner import store
from stagerunner.completer import decide
from stagerunner.protocol import Outcome, Status

if TYPE_CHECKING:
    import psycopg

log = logging.getLogger(__name__)


@dataclass
class Rescuer:
    owner: str
    node: str
    queues: str
    expiry: float

    def beat(self, conn: psycopg.Connection[Any]) -> None:
        store.beat_node(conn, owner=self.owner, node=self.node, host=socket.gethostname(),
                        pid=os.getpid(), queues=self.queues)

    def rescue(self, conn: psycopg.Connection[Any]) -> list[tuple[int, str]]:
        """Hand back the running tasks of dead owners; (task id, its status now)."""
        orphans = store.find_orphans(conn, expiry_s=self.expiry)
        rescued = []
        for owner, group in groupby(sorted(orphans, key=lambda o: o.owner), lambda o: o.owner):
            written = store.finish_tasks(conn, owner=owner, finishes=[_decide(o) for o in group])
            for task_id, status in sorted(written.items()):
                rescued.append((task_id, status))
                log.warning("task rescued from a dead node",
                            extra={"event": "task.rescued", "task_id": task_id, "status": status})
        store.forget_nodes(conn, expiry_s=self.expiry)
        return rescued


def _decide(orphan: store.Orphan) -> store.Finish:
    outcome = Outcome(orphan.task_id, orphan.attempt, Status.ERROR, 0.0, lost=True,
                      error=f"lost: its node ({orphan.owner}) stopped heartbeating while it ran")
    return decide(outcome, lost=orphan.lost, max_attempts=orphan.max_attempts, lost_backoff=False)
