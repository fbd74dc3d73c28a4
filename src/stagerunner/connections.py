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
    """This event loop's async pool (opened on first use, closed when the loop ends)."""
    import asyncio

    loop = asyncio.get_running_loop()
    key = ("async", os.getpid(), id(loop))
    opening = _pools.get(key)
    if opening is None:
        # One opening per loop, shared: concurrent first enqueues must not open a pool each.
        opening = _pools[key] = loop.create_task(_open_async_pool(key))
    if opening.done():
        return opening.result()
    return await asyncio.shield(opening)  # one caller's cancel must not cancel the others'


async def _open_async_pool(key: Any) -> Any:
    from psycopg_pool import AsyncConnectionPool

    try:
        conninfo, kwargs = _pool_args()
        created = AsyncConnectionPool(conninfo, min_size=1, max_size=POOL_MAX, kwargs=kwargs,
                                      open=False, name="stagerunner-async")
        # Waiting for the first connection keeps the first enqueue from also growing the
        # pool by a second one it does not need.
        await created.open(wait=True)
    except BaseException:
        _pools.pop(key, None)  # the next call tries again
        raise
    _close_with_the_loop(key, created)
    return created


def _close_with_the_loop(key: Any, pool: Any) -> None:
    """psycopg_pool's workers survive a cancel that lands in a connect (they retry), so
    a loop ended by asyncio.run with the pool open could hang cancelling them. A task that
    waits for that cancel closes the pool first, and forgets it (the loop's id may be
    reused by the next loop)."""
    import asyncio

    async def guard() -> None:
        try:
            await asyncio.Event().wait()
        finally:
            _pools.pop(key, None)
            await pool.close(timeout=1.0)

    task = asyncio.get_running_loop().create_task(guard(), name="stagerunner-pool-guard")
    _guards.add(task)
    task.add_done_callback(_guards.discard)


_guards: set[Any] = set()  # the loop keeps only weak references to its tasks


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
