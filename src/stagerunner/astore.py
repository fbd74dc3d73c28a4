"""The async twin of the application's statements (enqueue, the catalog, results), on a
psycopg ``AsyncConnection``: the same ``sql/`` files and the same statement sequences
as ``store`` (``store.Steps``), driven with ``await``.
"""

from __future__ import annotations

import contextlib
from typing import Any

import psycopg
from psycopg.rows import dict_row

from stagerunner import store


async def query(conn: psycopg.AsyncConnection[Any], name: str,
                params: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    """Run sql/<name>.sql and return its rows as dicts."""
    async with conn.cursor(row_factory=dict_row) as cur:
        await cur.execute(store.sql_text(name), params)
        return await cur.fetchall() if cur.description else []


async def drive(conn: psycopg.AsyncConnection[Any], steps: store.Steps) -> Any:
    """Run a statement sequence on an async connection (the steps ``store.drive`` knows)."""
    async with contextlib.AsyncExitStack() as held:
        try:
            step = next(steps)
            while True:
                step = steps.send(await _step(conn, held, *step))
        except StopIteration as done:
            return done.value


async def _step(conn: psycopg.AsyncConnection[Any], held: contextlib.AsyncExitStack, name: str,
                params: dict[str, Any]) -> list[dict[str, Any]]:
    if name == store.ATOMIC:
        await held.enter_async_context(conn.transaction())
        return []
    if name.startswith("copy_"):
        async with conn.cursor() as cur, cur.copy(store.sql_text(name)) as copy:
            for row in params["rows"]:
                await copy.write_row(row)
        return []
    return await query(conn, name, params)
