"""Where an application's enqueue (and result wait) goes, and what ``conn=`` may be.

Without ``conn=``, a process-wide pool (psycopg_pool; one per process, and one per event
loop for async) to the configured database: STAGERUNNER_DATABASE_URL, DATABASE_URL or
libpq's PG* variables, else the embedded server that a running node owns. An
application never starts an embedded server itself: it would enqueue into a database no
node reads. With nothing configured and no node running, it fails naming the setting.

``conn=`` may be a psycopg ``Connection`` / ``AsyncConnection`` (the statement runs in its
current transaction), a psycopg_pool pool, or, through ``orm``, a SQLAlchemy
Session / Connection (sync or async) or a Django connection.
"""

from __future__ import annotations

import contextlib
import os
import weakref
from collections.abc import AsyncIterator, Iterator
from typing import Any

from stagerunner.errors import ConfigError

POOL_MAX = 4
_pools: dict[Any, Any] = {}


def dsn(settings: Any = None) -> str:
    """The application's database DSN (from `settings`, else the environment's); ConfigError
    naming the setting when there is none."""
    from stagerunner import config, database

    settings = settings or config.load()
    found = settings.dsn()
    if found is not None:
        return found
    running = database.running_embedded(settings)
    if running is not None:
        return running
    raise ConfigError(
        "no database configured: set STAGERUNNER_DATABASE_URL (or DATABASE_URL), or pass "
        "conn=. An application does not start the embedded PostgreSQL itself; it uses "
        f"the one a running node (python -m stagerunner) owns in {settings.data_dir} "
        "(STAGERUNNER_DATA_DIR), and none is running there")


def _pool_args() -> tuple[str, dict[str, Any]]:
    """A pool's DSN and connection kwargs, from one reading of the settings."""
    from stagerunner import config, store

    settings = config.load()
    kwargs: dict[str, Any] = {"autocommit": True, "application_name": "stagerunner-app"}
    return dsn(settings), store.connect_kwargs(settings.pooled, kwargs)


def pool() -> Any:
    """This process's pool (opened on first use)."""
    key = ("sync", os.getpid())
    if key not in _pools:
        from psycopg_pool import ConnectionPool

        conninfo, kwargs = _pool_args()
        _pools[key] = ConnectionPool(conninfo, min_size=1, max_size=POOL_MAX, kwargs=kwargs,
                                     open=True, name="stagerunner")
    return _pools[key]


async def apool() -> Any:
    """This event loop's async pool (opened on first use)."""
    import asyncio

    key = ("async", os.getpid(), id(asyncio.get_running_loop()))
    if key not in _pools:
        from psycopg_pool import AsyncConnectionPool

        conninfo, kwargs = _pool_args()
        created = AsyncConnectionPool(conninfo, min_size=1, max_size=POOL_MAX, kwargs=kwargs,
                                      open=False, name="stagerunner-async")
        await created.open()
        _pools[key] = created
    return _pools[key]


def close_pools() -> None:
    """Close this process's sync pools (async ones close with their loop)."""
    for key, p in list(_pools.items()):
        if key[0] == "sync":
            p.close()
        del _pools[key]


@contextlib.contextmanager
def sync(conn: Any) -> Iterator[Any]:
    """A psycopg Connection for `conn` (None: the pool)."""
    import psycopg

    if conn is None:
        conn = pool()
    if isinstance(conn, psycopg.Connection):
        yield conn
    elif type(conn).__module__.startswith("psycopg_pool"):
        with conn.connection() as pooled:
            yield pooled
    else:
        from stagerunner import orm

        yield orm.driver_connection(conn)


@contextlib.asynccontextmanager
async def asynchronous(conn: Any) -> AsyncIterator[Any]:
    """A psycopg AsyncConnection for `conn` (None: this loop's pool)."""
    import psycopg

    if conn is None:
        conn = await apool()
    if isinstance(conn, psycopg.AsyncConnection):
        yield conn
    elif type(conn).__module__.startswith("psycopg_pool"):
        async with conn.connection() as pooled:
            yield pooled
    else:
        from stagerunner import orm

        yield await orm.adriver_connection(conn)


_keys: weakref.WeakKeyDictionary[Any, str] = weakref.WeakKeyDictionary()


def database_key(conn: Any) -> str:
    """Which database a connection talks to (the catalog is cached per database); asked
    of libpq once per connection (~10 µs), not on every enqueue."""
    key = _keys.get(conn)
    if key is None:
        info = conn.info
        key = _keys[conn] = f"{info.host}:{info.port}/{info.dbname}"
    return key
