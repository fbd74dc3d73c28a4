"""Heartbeats and rescue, on the producer's timer (River's JobRescuer, Oban's Lifeline).

Every ``heartbeat_interval`` the producer extends its owner's lease (``lease_s``, its
STAGERUNNER_NODE_EXPIRY) on the database clock, and hands back the running tasks of
owners whose lease ran out -- by their own lease length, whatever ours is: two nodes with
different settings never rescue each other's live work. Each comes back as a lost run,
decided by the same rule as any other outcome (``completer.decide``) and written through
the same guarded statement as if by the dead owner, so two rescuers racing write once.
Because an owner's jobs are killed before its lease runs out (see ``link``), an expired
owner runs nothing: rescuing its tasks can never start a second live run.
"""

from __future__ import annotations

import logging
import os
import socket
from dataclasses import dataclass
from itertools import groupby
from typing import TYPE_CHECKING, Any

from stagerunner import store
from stagerunner.completer import decide, write_finishes
from stagerunner.protocol import Outcome, Status

if TYPE_CHECKING:
    import psycopg

log = logging.getLogger(__name__)


@dataclass
class Rescuer:
    owner: str
    node: str
    queues: str
    lease_s: float

    def register(self, conn: psycopg.Connection[Any], consumers: int = 0,
                 info: dict[str, Any] | None = None) -> float:
        """A fresh lease; the seconds it has left."""
        return store.register_node(conn, owner=self.owner, node=self.node,
                                   host=socket.gethostname(), pid=os.getpid(),
                                   queues=self.queues, lease_s=self.lease_s,
                                   consumers=consumers, info=info)

    def beat(self, conn: psycopg.Connection[Any], consumers: int = 0,
             info: dict[str, Any] | None = None) -> float | None:
        """Extend the lease; the seconds it has left, or None if it had run out."""
        return store.beat_node(conn, owner=self.owner, consumers=consumers, info=info)

    def rescue(self, conn: psycopg.Connection[Any]) -> list[tuple[int, str]]:
        """Hand back the running tasks of dead owners; (task id, its status now)."""
        orphans = store.find_orphans(conn)
        rescued = []
        for owner, group in groupby(sorted(orphans, key=lambda o: o.owner), lambda o: o.owner):
            # a row the database refuses must not keep every node from connecting
            written = write_finishes(conn, owner, [_decide(o) for o in group])
            for task_id, status in sorted(written.items()):
                if status == store.BUSY:  # locked by someone: the next heartbeat's rescue
                    continue
                rescued.append((task_id, status))
                log.warning("task rescued from a dead node",
                            extra={"event": "task.rescued", "task_id": task_id, "status": status})
        store.forget_nodes(conn)
        return rescued


def _decide(orphan: store.Orphan) -> store.Finish:
    outcome = Outcome(orphan.task_id, orphan.attempt, Status.ERROR, 0.0, lost=True,
                      error=f"lost: its node ({orphan.owner}) let its lease run out while it ran")
    return decide(outcome, lost=orphan.lost, max_attempts=orphan.max_attempts, kills=orphan.kills)
