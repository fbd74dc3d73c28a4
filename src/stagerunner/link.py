"""The producer's link to PostgreSQL: a work connection, a LISTEN connection, reconnecting
with backoff, and the fence.

Losing the database is normal weather: the producer keeps going without a connection
(outcomes stay buffered, consumers keep enforcing deadlines) and asks ``reconnect_due``
each loop. The fence: once the last heartbeat is older than 80% of the node expiry,
other nodes may soon hand our tasks to someone else, so a producer that holds tasks
must stop (see ``producer``).

Through a transaction-pooling PgBouncer (``pooled``) the work connection keeps no session
state, and LISTEN, which needs a session, goes over ``listen_dsn`` (a direct connection)
when there is one; without it the producer polls (``polling``), as the log says once.
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING, Any

from stagerunner import store

if TYPE_CHECKING:
    import psycopg

log = logging.getLogger(__name__)

BACKOFF_FIRST_S = 0.1
BACKOFF_MAX_S = 5.0
FENCE_FRACTION = 0.8  # of the node expiry: stop before anyone may rescue our tasks


class Link:
    def __init__(self, dsn: str, expiry: float, listen_dsn: str | None = None,
                 pooled: bool = False) -> None:
        self.dsn = dsn
        self.expiry = expiry
        self.listen_dsn = listen_dsn
        self.pooled = pooled
        self.said_polling = False
        self.conn: psycopg.Connection[Any] | None = None
        self.listen: psycopg.Connection[Any] | None = None
        self.reconnect_at = 0.0
        self.backoff = BACKOFF_FIRST_S
        self.last_beat: float | None = None  # monotonic time of the last heartbeat written
        self.losses = 0

    @property
    def up(self) -> bool:
        return self.conn is not None

    def reconnect_due(self, now: float) -> bool:
        return self.conn is None and now >= self.reconnect_at

    @property
    def polling(self) -> bool:
        """No LISTEN: wake-ups, pauses and cancels are found by polling."""
        return self.pooled and self.listen_dsn is None

    def connect(self) -> psycopg.Connection[Any]:
        """Open both connections and LISTEN; psycopg.Error if the database is not there."""
        conn = store.connect_guarded(self.dsn, pooled=self.pooled)
        listen = None
        try:
            if not self.polling:
                listen = store.connect_guarded(self.listen_dsn or self.dsn)
                store.listen(listen)
        except BaseException:
            conn.close()
            raise
        if self.polling and not self.said_polling:
            self.said_polling = True
            log.warning("transaction pooling without STAGERUNNER_LISTEN_DATABASE_URL: no LISTEN, "
                        "polling for work, pauses and cancels", extra={"event": "db.polling"})
        self.conn, self.listen = conn, listen
        self.backoff = BACKOFF_FIRST_S
        return conn

    def socket(self) -> int | None:
        return self.listen.pgconn.socket if self.listen is not None else None

    def notifies(self) -> list[tuple[str, str]]:
        """Notifications that have arrived, as (channel, payload); psycopg.Error if the
        LISTEN connection broke."""
        assert self.listen is not None
        return [(n.channel, n.payload) for n in self.listen.notifies(timeout=0)]

    def lost(self, exc: Exception, buffered: int) -> None:
        """Close both connections and schedule the next attempt, backing off."""
        self.close()
        self.losses += 1
        self.reconnect_at = time.monotonic() + self.backoff
        log.warning("database unavailable; retrying", extra={
            "event": "db.disconnected", "error": str(exc).strip()[:300],
            "retry_in_s": round(self.backoff, 2), "buffered": buffered})
        self.backoff = min(self.backoff * 2, BACKOFF_MAX_S)

    def retry_now(self) -> None:
        """No backoff left to honour (the producer is leaving)."""
        self.reconnect_at = 0.0

    def close(self) -> None:
        for c in (self.conn, self.listen):
            if c is not None:
                try:
                    c.close()
                except Exception:
                    pass
        self.conn = self.listen = None

    def beat(self, now: float) -> None:
        """A heartbeat was written at `now`."""
        self.last_beat = now

    def fenced(self, now: float) -> bool:
        """True once our heartbeat is close enough to expiring that others may rescue us."""
        return self.last_beat is not None and now - self.last_beat > self.expiry * FENCE_FRACTION
