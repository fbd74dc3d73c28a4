"""Waiting for a task's result: ``stagerunner.result(task_id, timeout=...)`` and its async
twin ``stagerunner.aresult``.

The waiter LISTENs on ``stagerunner_results`` on a connection of its own (a trigger
NOTIFYs the task id whenever a task reaches a terminal status), then reads the row: a
task that finished before the LISTEN is seen by that read, one that finishes after it
wakes the wait, so no wake-up is lost and nothing polls. A payload that is not an
integer (anyone may NOTIFY that channel) is ignored. It returns the task's JSON result,
or raises ``TaskFailed`` (final status and last error), ``ResultTimeout`` or
``TaskNotFound``.
"""

from __future__ import annotations

import time
from typing import Any

from stagerunner.errors import StagerunnerError

TERMINAL = ("success", "error", "timeout", "cancelled")


class TaskFailed(StagerunnerError):
    """The task ended without a result."""

    def __init__(self, task_id: int, status: str, error: str | None) -> None:
        last = [line for line in (error or "").strip().splitlines() if line.strip()]
        super().__init__(f"task {task_id} ended {status}" + (f": {last[-1]}" if last else ""))
        self.task_id, self.status, self.error = task_id, status, error


class ResultTimeout(StagerunnerError, TimeoutError):
    """The task did not finish in time."""


class TaskNotFound(StagerunnerError, LookupError):
    """No such task (never enqueued, or already deleted by retention)."""


def settled(task_id: int, rows: list[dict[str, Any]]) -> tuple[bool, Any]:
    """(True, result) for a successful task; (False, None) while it is not finished;
    TaskFailed or TaskNotFound otherwise (pure)."""
    if not rows:
        raise TaskNotFound(f"no task {task_id}")
    row = rows[0]
    if row["status"] == "success":
        return True, row["result"]
    if row["status"] in TERMINAL:
        raise TaskFailed(task_id, row["status"], row["last_error"])
    return False, None


def ours(task_id: int, payload: str) -> bool:
    """Is this notification about our task? (Payloads are untrusted.)"""
    text = payload.strip()  # ASCII digits only: '²'.isdigit() is true and int('²') raises
    return text.isascii() and text.isdigit() and len(text) < 20 and int(text) == task_id


def _remaining(deadline: float | None) -> float | None:
    return None if deadline is None else deadline - time.monotonic()


def result(task_id: int, *, timeout: float | None = None, dsn: str | None = None) -> Any:
    """Block until task `task_id` is finished; its result, or TaskFailed / ResultTimeout."""
    import psycopg

    from stagerunner import connections, store

    deadline = None if timeout is None else time.monotonic() + timeout
    with store.safe_json(psycopg.connect(dsn or connections.dsn(), autocommit=True,
                                         application_name="stagerunner-result")) as conn:
        store.query(conn, "listen_results")
        while True:
            done, value = settled(task_id, store.query(conn, "get_result", {"id": task_id}))
            if done:
                return value
            left = _remaining(deadline)
            if left is not None and left <= 0:
                raise ResultTimeout(f"task {task_id} did not finish within {timeout:g} s")
            for note in conn.notifies(timeout=left):
                if ours(task_id, note.payload):
                    break


async def aresult(task_id: int, *, timeout: float | None = None, dsn: str | None = None) -> Any:
    """``result``'s async twin (the wait does not block the event loop)."""
    from stagerunner import aio

    await aio.ready()
    import psycopg

    from stagerunner import astore, connections, store

    deadline = None if timeout is None else time.monotonic() + timeout
    async with store.safe_json(await psycopg.AsyncConnection.connect(
            dsn or connections.dsn(), autocommit=True,
            application_name="stagerunner-result")) as conn:
        await astore.query(conn, "listen_results")
        while True:
            done, value = settled(task_id, await astore.query(conn, "get_result",
                                                               {"id": task_id}))
            if done:
                return value
            left = _remaining(deadline)
            if left is not None and left <= 0:
                raise ResultTimeout(f"task {task_id} did not finish within {timeout:g} s")
            async for note in conn.notifies(timeout=left):
                if ours(task_id, note.payload):
                    break
