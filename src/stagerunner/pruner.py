"""Retention on the producer's timer: finished tasks older than STAGERUNNER_RETENTION (failed
ones: STAGERUNNER_FAILED_RETENTION, so they can be inspected and retried) are deleted in
small batches, by one node at a time (an advisory lock decides which). 0 keeps forever."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from stagerunner import store

if TYPE_CHECKING:
    import psycopg

log = logging.getLogger(__name__)
BATCH = 500
INTERVAL_S = 60.0
CATCH_UP_S = 1.0  # a full batch means more is waiting: come back soon, in small bites


@dataclass
class Pruner:
    retention_s: float
    failed_retention_s: float = 0.0

    def step(self, conn: psycopg.Connection[Any]) -> float:
        """Delete one batch; seconds until the next one is due."""
        deleted = store.purge_tasks(conn, older_s=self.retention_s or None, batch=BATCH,
                                    exclusive=True, failed_older_s=self.failed_retention_s or None)
        if deleted:
            log.info("finished tasks pruned", extra={"event": "tasks.pruned", "count": deleted})
        return CATCH_UP_S if deleted == BATCH else INTERVAL_S
