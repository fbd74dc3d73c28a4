"""Retention: finished tasks older than STAGERUNNER_RETENTION (failed ones: older than
STAGERUNNER_FAILED_RETENTION, so they can be inspected and retried) are deleted in
batches, by one node at a time (an advisory lock decides which). 0 keeps them forever.

It runs in a thread of the supervisor, on a connection of its own, not in the producer's
loop: a long delete never holds up claims, heartbeats or outcomes. While it finds full
batches it goes on at once, so it keeps up with any rate a node can finish tasks at; once
it is caught up it looks again every minute.
"""

from __future__ import annotations

import logging
import threading
from typing import Any

from stagerunner import opstore, store

log = logging.getLogger(__name__)
BATCH = 5000
INTERVAL_S = 60.0
RETRY_S = 5.0  # after a database error


class Pruner:
    def __init__(self, dsn: str, retention_s: float, failed_retention_s: float = 0.0,
                 pooled: bool = False) -> None:
        self.dsn = dsn
        self.pooled = pooled
        self.retention_s = retention_s
        self.failed_retention_s = failed_retention_s
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self.run, name="pruner", daemon=True)
        self.conn: Any = None

    def start(self) -> None:
        self.thread.start()

    def run(self) -> None:
        while not self.stop.is_set():
            try:
                deleted = self.step()
            except Exception as exc:  # the database went away: try again later
                log.warning("pruning failed; retrying", extra={"event": "tasks.prune_failed",
                                                               "error": str(exc).strip()[:200]})
                self._close()
                self.stop.wait(RETRY_S)
                continue
            if deleted < BATCH:
                self.stop.wait(INTERVAL_S)

    def step(self) -> int:
        """Delete one batch; how many rows went."""
        if self.conn is None:
            self.conn = store.connect_guarded(self.dsn, pooled=self.pooled)
        deleted = opstore.purge_tasks(self.conn, older_s=self.retention_s or None, batch=BATCH,
                                    exclusive=True, failed_older_s=self.failed_retention_s or None)
        if deleted:
            log.info("finished tasks pruned", extra={"event": "tasks.pruned", "count": deleted})
        return deleted

    def _close(self) -> None:
        store.close_quietly(self.conn)
        self.conn = None
