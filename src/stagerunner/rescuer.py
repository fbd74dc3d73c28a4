"""Heartbeats and rescue, on the producer's timer (River's JobRescuer, Oban's Lifeline).

Every ``heartbeat_interval`` the producer stamps its owner row with the database
clock, and hands back the running tasks of owners whose stamp is older than
``node_expiry``. Because every job is killed at its deadline and a producer that cannot
beat stops its jobs (see producer.py), an expired owner runs nothing: rescuing its
tasks can never start a second live run.
"""

from __future__ import annotations

import logging
import os
import socket
from dataclasses import dataclass

import psycopg

from stagerunner import store
from stagerunner.completer import LOST_LIMIT

log = logging.getLogger(__name__)


@dataclass
class Rescuer:
    owner: str
    node: str
    queues: str
    interval: float
    expiry: float
    next_at: float = 0.0
    last_beat: float | None = None  # monotonic time of the last successful heartbeat

    def due(self, now: float) -> bool:
        return now >= self.next_at

    def step(self, conn: psycopg.Connection, now: float) -> list[tuple[int, str]]:
        self.next_at = now + self.interval
        store.beat_node(conn, owner=self.owner, node=self.node, host=socket.gethostname(),
                        pid=os.getpid(), queues=self.queues)
        self.last_beat = now
        rescued = store.rescue_orphans(conn, expiry_s=self.expiry, lost_limit=LOST_LIMIT)
        for task_id, status in rescued:
            log.warning("task rescued from a dead node",
                        extra={"event": "task.rescued", "task_id": task_id, "status": status})
        return rescued

    def fenced(self, now: float) -> bool:
        """True once our heartbeat is close enough to expiring that others may rescue us."""
        return self.last_beat is not None and now - self.last_beat > self.expiry * 0.8
