"""The async twin of the application's statements (enqueue, the catalog, results), on a
psycopg ``AsyncConnection``: the same ``sql/`` files and the same statement sequences
as ``store`` (``store.Steps``), driven with ``await``.
"""

from __future__ import annotations

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
    """Run a statement sequence on an async connection."""
    try:
        step = next(steps)
        while True:
            step = steps.send(await query(conn, *step))
    except StopIteration as done:
        return done.value
