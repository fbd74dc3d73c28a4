"""The producer's link to PostgreSQL: two work connections (``conn`` for claims and the
rest; ``writer`` for the outcome write that runs beside a claim, so that neither waits
for the other's statement, opened when first needed: a start's first claims have no
outcomes to write), a LISTEN connection, reconnecting with backoff, and the lease that
fences this node's jobs. Losing any of them closes them all.

Losing the database is normal weather: the producer keeps going without a connection
(outcomes stay buffered, consumers keep enforcing deadlines) and asks ``reconnect_due``
each loop.

The lease: every heartbeat extends the owner's row to ``expires_at = now() + lease``
(database clock); once that has passed, any node may rescue our running tasks. The
heartbeat statement was sent at ``sent`` on our clock, so the database's now() is no
earlier than that, and the lease cannot run out before ``sent + lease_left``. We stop
our jobs a margin earlier: ``lease_until``. The consumers get it (``protocol.Lease``) and
arm a kernel timer with it, so the fence holds even if this process is stopped, frozen
or scheduled late; the producer itself stops once it passes ``lease_until`` holding
tasks, and a lease that ran out is never extended (the beat statement refuses it).

Through a transaction-pooling PgBouncer (``pooled``) the work connection keeps no session
state, and LISTEN, which needs a session, goes over ``listen_dsn`` (a direct connection)
when there is one; without it the producer polls (``polling``), as the log says once.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

import psycopg

from stagerunner import store

log = logging.getLogger(__name__)

BACKOFF_FIRST_S = 0.1
BACKOFF_MAX_S = 5.0
FENCE_MARGIN_S = 0.2  # jobs stop at least this long before the lease runs out ...
FENCE_MARGIN_FRACTION = 0.1  # ... or this part of the lease, whichever is longer


class Link:
    def __init__(self, dsn: str, expiry: float, listen_dsn: str | None = None,
                 pooled: bool = False) -> None:
        self.dsn = dsn
        self.expiry = expiry
        self.listen_dsn = listen_dsn
        self.pooled = pooled
        self.said_polling = False
        self.conn: psycopg.Connection[Any] | None = None
        self.writer: psycopg.Connection[Any] | None = None
        self.listen: psycopg.Connection[Any] | None = None
        self.reconnect_at = 0.0
        self.backoff = BACKOFF_FIRST_S
        self.lease_until = 0.0  # CLOCK_BOOTTIME; 0: no lease yet
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
        """Open the connections and LISTEN; psycopg.Error if the database is not there."""
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

    def second(self) -> psycopg.Connection[Any]:
        """The second work connection, opened now if it is not open; psycopg.Error if the
        database is not there (the caller then loses the link, as for any statement)."""
        if self.writer is None:
            self.writer = store.connect_guarded(self.dsn, pooled=self.pooled)
        return self.writer

    def socket(self) -> int | None:
        return self.listen.pgconn.socket if self.listen is not None else None

    def notifies(self) -> list[tuple[str, str]]:
        """Notifications that have arrived, as (channel, payload); psycopg.Error if the
        LISTEN connection broke."""
        assert self.listen is not None
        return [(n.channel, n.payload) for n in self.listen.notifies(timeout=0)]

    def lost(self, exc: Exception, buffered: int) -> None:
        """Close the connections and schedule the next attempt, backing off."""
        self.close()
        self.losses += 1
        self.reconnect_at = time.monotonic() + self.backoff
        log.warning("database unavailable; retrying", extra={
            "event": "db.disconnected", "error": str(exc).strip()[:300],
            "retry_in_s": round(self.backoff, 2), "buffered": buffered})
        self.backoff = min(self.backoff * 2, BACKOFF_MAX_S)

    def last_chance(self, write: Callable[[psycopg.Connection[Any]], None], seconds: float) -> bool:
        """Before exiting: run `write` on a connection until it succeeds or `seconds` have
        passed, reconnecting without backoff (there is no later to back off to)."""
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            try:
                write(self.conn or self.connect())
                return True
            except psycopg.Error as exc:
                self.close()
                log.warning("database unavailable while leaving; retrying", extra={
                    "event": "db.disconnected", "error": str(exc).strip()[:300]})
                time.sleep(0.1)  # bounded by the deadline; nothing else to wait for
        return False

    def close(self) -> None:
        store.close_quietly(self.conn)
        store.close_quietly(self.writer)
        store.close_quietly(self.listen)
        self.conn = self.writer = self.listen = None

    def leased(self, sent: float, left_s: float) -> float:
        """The heartbeat sent at `sent` (CLOCK_BOOTTIME) left the lease `left_s` seconds to
        run; when our jobs must have stopped, which is returned."""
        margin = max(FENCE_MARGIN_S, FENCE_MARGIN_FRACTION * self.expiry)
        self.lease_until = sent + left_s - margin
        return self.lease_until

    def fenced(self, boot_now: float) -> bool:
        """True once the lease is close enough to running out that our jobs must stop."""
        return self.lease_until > 0 and boot_now >= self.lease_until
