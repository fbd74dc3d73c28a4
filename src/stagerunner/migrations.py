"""The schema: installing it (``migrate``, and the embedded server's first use) and checking
that a database holds the version this code expects (``run`` refuses one that does not).
"""

from __future__ import annotations

from importlib import resources
from typing import Any

import psycopg

from stagerunner import store
from stagerunner.errors import SchemaMissing

SCHEMA_VERSION = 2


def schema_text() -> str:
    return resources.files("stagerunner").joinpath("schema.sql").read_text()


def install_schema(conn: psycopg.Connection[Any]) -> None:
    """Apply schema.sql (idempotent), serialised across concurrent installers."""
    with conn.transaction():
        store.query(conn, "lock_schema")
        conn.execute(schema_text().encode())


def check_schema(conn: psycopg.Connection[Any]) -> int:
    """The installed schema version, or SchemaMissing naming the command that installs it."""
    if not store.query(conn, "schema_exists")[0]["present"]:
        raise SchemaMissing()
    rows = store.query(conn, "check_schema")
    if not rows or rows[0]["version"] != SCHEMA_VERSION:
        found = rows[0]["version"] if rows else "none"
        raise SchemaMissing(f"schema version {found} found, {SCHEMA_VERSION} expected; "
                            "run `python -m stagerunner migrate`")
    return SCHEMA_VERSION
