"""Async enqueue for asyncio applications (FastAPI, aiohttp, ...):
``await stagerunner.aenqueue(...)``, ``await task.aenqueue(...)`` and
``await stagerunner.aenqueue_many([...], conn=async_conn)``, on a psycopg
``AsyncConnection`` (inside its current transaction), an ``AsyncConnectionPool``, a
SQLAlchemy ``AsyncSession`` / ``AsyncConnection``, or this event loop's own pool.

The same statements as the sync path (``enqueueing.steps``), so options, the catalog, the
signature check and uniqueness behave the same. The first call in a process imports
psycopg, the pool and the settings in a worker thread, not on the caller's event loop.
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Iterable
from typing import Any

from stagerunner import enqueueing

# What the first enqueue imports (~0.2-0.4 s of CPU), done in a thread; the pool and the
# settings only when no connection is passed.
_HEAVY = ("psycopg", "stagerunner.astore", "stagerunner.connections", "stagerunner.catalog")
_POOL = ("psycopg_pool", "pydantic_settings", "stagerunner.config")


def _import(modules: tuple[str, ...]) -> None:
    import importlib

    for module in modules:
        importlib.import_module(module)


async def ready(pool: bool = True) -> None:
    """Import what enqueueing needs, off the event loop (a no-op once done)."""
    modules = _HEAVY + _POOL if pool else _HEAVY
    if any(module not in sys.modules for module in modules):
        await asyncio.to_thread(_import, modules)


async def enqueue(target: Any, function: Any = None, args: Any = None, /, **options: Any
                  ) -> int:
    """``stagerunner.enqueue``'s async twin; returns the task id."""
    return (await enqueue_many([enqueueing.split_target(target, function, args)], **options))[0]


async def enqueue_many(items: Iterable[tuple[Any, Any]], /, **options: Any) -> list[int]:
    """Enqueue many (name, args) pairs in one INSERT statement; ids in input order."""
    conn, pairs = enqueueing.check_options(options), list(items)
    if enqueueing.INLINE[0] is not None:  # stagerunner.testing: run them now, off the loop
        ids: list[int] = await asyncio.to_thread(enqueueing.INLINE[0].run_many, pairs, options)
        return ids
    await ready(pool=conn is None)
    from stagerunner import astore, connections

    async with connections.asynchronous(conn) as c:
        ids = await astore.drive(c, enqueueing.steps(connections.database_key(c), pairs,
                                                              options))
    return ids
