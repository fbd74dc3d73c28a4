"""Databases for the tests, the chaos run and the benchmark: a DSN pointing at another
database, a fresh database created on an admin DSN and dropped after, connecting to a
server that may be restarting, and terminating a node's sessions.

Harness code: its few statements of admin SQL live here, not in the runtime's sql/.
"""

from __future__ import annotations

import itertools
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import psycopg
from psycopg.conninfo import conninfo_to_dict, make_conninfo

DEFAULT_ADMIN_DSN = "postgresql://postgres@127.0.0.1:5432/postgres"
_counter = itertools.count()


def with_dbname(dsn: str, dbname: str) -> str:
    """The same server and credentials, another database."""
    info = conninfo_to_dict(dsn)
    info["dbname"] = dbname
    return make_conninfo(**{k: v for k, v in info.items() if v is not None})


def with_user(dsn: str, user: str) -> str:
    """The same server and database as another role (no password: trust or its own)."""
    info = conninfo_to_dict(dsn)
    info["user"] = user
    info.pop("password", None)
    return make_conninfo(**{k: v for k, v in info.items() if v is not None})


def dbname_of(dsn: str) -> str:
    return str(conninfo_to_dict(dsn)["dbname"])


def create_database(admin_dsn: str, name: str, template: str | None = None,
                    schema: bool = False) -> str:
    """CREATE DATABASE `name` (as a copy of `template`); with `schema`, install
    stagerunner's schema in it. Its DSN."""
    clone = f' TEMPLATE "{template}" STRATEGY FILE_COPY' if template else ""
    with connect_retrying(admin_dsn) as admin:
        admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.execute(f'CREATE DATABASE "{name}"{clone}')
    dsn = with_dbname(admin_dsn, name)
    if schema:
        from stagerunner import migrations

        with connect_retrying(dsn) as conn:
            migrations.install_schema(conn)
    return dsn


def drop_database(admin_dsn: str, name: str) -> None:
    with connect_retrying(admin_dsn) as admin:
        admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@contextmanager
def fresh_database(admin_dsn: str, prefix: str, template: str | None = None,
                   schema: bool = False) -> Iterator[str]:
    """A database of our own for the duration of the block; its DSN."""
    name = f"{prefix}_{os.getpid()}_{next(_counter)}"
    dsn = create_database(admin_dsn, name, template, schema)
    try:
        yield dsn
    finally:
        drop_database(admin_dsn, name)


def connect_retrying(dsn: str, timeout: float = 30, **kwargs: Any) -> psycopg.Connection[Any]:
    """An autocommit connection to a server that may be (re)starting."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            return psycopg.connect(dsn, autocommit=True, connect_timeout=3, **kwargs)
        except psycopg.OperationalError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)


def terminate_node_sessions(admin: psycopg.Connection[Any], dbname: str) -> int:
    """pg_terminate_backend every stagerunner connection to `dbname` (ours only)."""
    found = admin.execute(
        "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity WHERE datname = %s "
        "AND application_name = 'stagerunner' AND pid <> pg_backend_pid()", [dbname]).fetchone()
    return int(found[0]) if found else 0


def node_backends(conn: psycopg.Connection[Any], dbname: str) -> list[int]:
    """Backend pids of a node's connections to `dbname`."""
    return [int(p) for (p,) in conn.execute(
        "SELECT pid FROM pg_stat_activity WHERE datname = %s "
        "AND application_name = 'stagerunner'", [dbname]).fetchall()]
