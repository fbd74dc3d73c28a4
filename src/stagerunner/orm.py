"""Enqueue inside the application's own transaction, through its ORM: each framework's
public API gives us its psycopg (3) connection, and the INSERT runs in whatever
transaction that connection is in, so the task commits or rolls back with the
application's own writes.

- SQLAlchemy 2 (``pip install 'stagerunner[sqlalchemy]'``, engine URL
  ``postgresql+psycopg://``): a ``Session`` or ``Connection``
  (``Connection.connection.driver_connection``), an ``AsyncSession`` or
  ``AsyncConnection`` (``get_raw_connection()``), each inside its transaction.
- Django (``pip install 'stagerunner[django]'``, the ``postgresql`` backend on psycopg 3):
  ``django.db.connection`` (or ``connections[alias]``), inside ``transaction.atomic``.

Imported only when such a ``conn=`` is passed: neither framework is a dependency.
"""

from __future__ import annotations

from typing import Any

import psycopg


def driver_connection(conn: Any) -> psycopg.Connection[Any]:
    """The psycopg Connection under a SQLAlchemy Session/Connection or a Django connection."""
    module = type(conn).__module__
    if module.startswith("sqlalchemy"):
        if hasattr(conn, "get_bind") and hasattr(conn, "connection"):  # a Session
            conn = conn.connection()
        raw = conn.connection.driver_connection
    elif module.startswith("django"):
        if getattr(conn, "vendor", None) != "postgresql":
            raise TypeError(f"stagerunner needs a PostgreSQL database, not {conn.vendor!r}")
        conn.ensure_connection()
        raw = conn.connection
    else:
        raise TypeError(f"conn= takes a psycopg connection or pool, a SQLAlchemy Session or "
                        f"Connection, or a Django connection, not {type(conn).__name__}")
    return _psycopg(raw, psycopg.Connection)


async def adriver_connection(conn: Any) -> psycopg.AsyncConnection[Any]:
    """The psycopg AsyncConnection under a SQLAlchemy AsyncSession or AsyncConnection."""
    if not type(conn).__module__.startswith("sqlalchemy"):
        raise TypeError(f"async conn= takes a psycopg AsyncConnection or AsyncConnectionPool, "
                        f"or a SQLAlchemy AsyncSession or AsyncConnection, not "
                        f"{type(conn).__name__}")
    if hasattr(conn, "get_bind"):  # an AsyncSession: its connection, in its transaction
        conn = await conn.connection()
    raw = await conn.get_raw_connection()
    return _psycopg(raw.driver_connection, psycopg.AsyncConnection)


def _psycopg(raw: Any, kind: type) -> Any:
    if not isinstance(raw, kind):
        raise TypeError(f"stagerunner enqueues through psycopg 3; this connection's driver is "
                        f"{type(raw).__module__}.{type(raw).__name__} (use a postgresql+psycopg:// "
                        "URL with SQLAlchemy, or install psycopg for Django)")
    return raw
