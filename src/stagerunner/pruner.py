"""Retention on the producer's timer: finished tasks older than STAGERUNNER_RETENTION are
deleted in small batches, by one node at a time (an advisory lock decides which)."""

from __future__ import annotations

import logging
from dataclasses import dataclass

import psycopg

from stagerunner import store

log = logging.getLogger(__name__)
BATCH = 500
INTERVAL_S = 60.0
CATCH_UP_S = 1.0  # a full batch means more is waiting: come back soon, in small bites


@dataclass
class Pruner:
    retention_s: float
    next_at: float = 0.0

    def due(self, now: float) -> bool:
        return self.retention_s > 0 and now >= self.next_at

    def step(self, conn: psycopg.Connection, now: float) -> int:
        deleted = store.purge_tasks(conn, older_s=self.retention_s, batch=BATCH, exclusive=True)
        self.next_at = now + (CATCH_UP_S if deleted == BATCH else INTERVAL_S)
        if deleted:
            log.info("finished tasks pruned", extra={"event": "tasks.pruned", "count": deleted})
        return deleted
