"""The schema: installing and upgrading it (``migrate``, and the embedded server's first
use) and checking that a database holds the version this code expects (``run`` refuses
one that does not).

``schema.sql`` is the one DDL file, idempotent, and its last statement records its
version. A database already at that version costs nothing: ``migrate`` reads the version
and stops, with no DDL and no lock, so running it from every deploy (or every embedded
command) never stalls a cluster. Otherwise it applies the file in one transaction whose
lock waits are bounded (``lock_timeout``): behind a long transaction that holds a lock
on the tasks table it gives up within a fraction of a second, leaving the running nodes
alone, and tries again with a backoff, saying so in the log.
"""

from __future__ import annotations

import logging
import re
import time
from importlib import resources
from typing import Any

import psycopg

from stagerunner import store
from stagerunner.errors import SchemaLocked, SchemaMissing

log = logging.getLogger(__name__)

# Short: while our request for the table's lock waits, every later lock request (a
# node's claim included) queues behind it. A few hundred milliseconds of that, now and
# then, are better than a freeze behind someone's hour-long transaction.
LOCK_TIMEOUT = "200ms"
ATTEMPTS = 30
BACKOFF_FIRST_S = 0.5
BACKOFF_MAX_S = 5.0


def schema_text() -> str:
    return resources.files("stagerunner").joinpath("schema.sql").read_text()


def _version_in_file() -> int:
    found = re.findall(r"schema_version \(version\) VALUES \((\d+)\)", schema_text())
    if len(found) != 1:
        raise RuntimeError("schema.sql must record exactly one schema version")
    return int(found[0])


SCHEMA_VERSION = _version_in_file()


def installed_version(conn: psycopg.Connection[Any]) -> int | None:
    """The version the database records, or None when the schema is not installed."""
    if not store.query(conn, "schema_exists")[0]["present"]:
        return None
    rows = store.query(conn, "check_schema")
    return int(rows[0]["version"]) if rows else None


def migrate(conn: psycopg.Connection[Any], *, attempts: int = ATTEMPTS) -> bool:
    """Bring the schema to SCHEMA_VERSION; True if DDL ran (False: it was current)."""
    installed = installed_version(conn)
    if installed == SCHEMA_VERSION:
        return False
    if installed is not None and installed > SCHEMA_VERSION:
        raise SchemaMissing(f"the database has schema version {installed}, newer than this "
                            f"stagerunner's {SCHEMA_VERSION}: upgrade stagerunner")
    delay = BACKOFF_FIRST_S
    for attempt in range(1, attempts + 1):
        try:
            return _apply(conn)
        except psycopg.errors.LockNotAvailable as exc:
            if attempt == attempts:
                raise SchemaLocked(f"schema version {SCHEMA_VERSION} not installed: a lock on "
                                   f"it was held through {attempts} tries ({exc})") from None
            log.warning("schema upgrade waits for a lock held by another transaction", extra={
                "event": "schema.lock_wait", "attempt": attempt, "retry_in_s": delay})
            time.sleep(delay)  # bounded: `attempts` tries, each waiting at most LOCK_TIMEOUT
            delay = min(delay * 2, BACKOFF_MAX_S)
    return False


def _apply(conn: psycopg.Connection[Any]) -> bool:
    with conn.transaction():
        store.query(conn, "set_lock_timeout", {"timeout": LOCK_TIMEOUT})
        store.query(conn, "lock_schema")  # one installer at a time; bounded by lock_timeout
        if installed_version(conn) == SCHEMA_VERSION:
            return False  # another installer did it while we waited
        conn.execute(schema_text().encode())
    log.info("schema installed", extra={"event": "schema.installed", "version": SCHEMA_VERSION})
    return True


def install_schema(conn: psycopg.Connection[Any]) -> None:
    """Install or upgrade the schema (what ``migrate`` does)."""
    migrate(conn)


def check_schema(conn: psycopg.Connection[Any]) -> int:
    """The installed schema version, or SchemaMissing naming the command that installs it."""
    installed = installed_version(conn)
    if installed is None:
        raise SchemaMissing()
    if installed != SCHEMA_VERSION:
        raise SchemaMissing(f"schema version {installed} found, {SCHEMA_VERSION} expected; "
                            "run `python -m stagerunner migrate`")
    return SCHEMA_VERSION
