"""Enqueue as a statement sequence (``store.Steps``): what ``store.drive`` runs on a sync
connection and ``astore.drive`` on an async one. One row: ``insert_task``; many:
``insert_tasks`` (arrays bound in one INSERT); many without uniqueness keys:
COPY into a staging table and one INSERT ... SELECT.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import TYPE_CHECKING, Any, NamedTuple

from stagerunner import store

if TYPE_CHECKING:
    import psycopg


class NewTask(NamedTuple):
    """One task to insert. A tuple (a third of a frozen dataclass's cost to build, ~0.4
    against ~1.3 µs, in a bulk enqueue's ~4 µs of Python a task) whose first eight fields
    are the staging table's columns after `ord`, in order."""

    name: str
    args: str  # JSON text, validated by client.to_json
    queue: str = "default"
    priority: int = 0
    max_attempts: int = 3
    timeout_s: float | None = None
    delay_s: float | None = None
    run_at: datetime | None = None
    unique_key: str | None = None


_STAGED = 8  # NewTask's fields that copy_staged_tasks takes: name ... run_at
INSERT_ROUNDS = 3  # a key whose holder finishes between our insert and our lookup: retry
COPY_MIN = 1000  # tasks; a smaller enqueue binds arrays in one INSERT, as fast as staging

def insert_tasks(conn: psycopg.Connection[Any], tasks: Sequence[NewTask]) -> list[int]:
    """(new) -> waiting for all of them in one statement; ids in input order.

    A task whose unique_key is already held by a waiting or running task (or by an
    earlier task of the same call) yields that task's id instead of a new row.
    """
    return store.drive(conn, insert_steps(tasks))  # type: ignore[no-any-return]


def insert_steps(tasks: Sequence[NewTask]) -> store.Steps:
    if len(tasks) >= COPY_MIN and all(t.unique_key is None for t in tasks):
        return (yield from _staged(tasks))
    ids: list[int | None] = [None] * len(tasks)
    todo = list(range(len(tasks)))
    for _ in range(INSERT_ROUNDS):
        if not todo:
            break
        todo = yield from _insert_round(tasks, todo, ids)
    if todo:
        raise RuntimeError(f"could not settle the uniqueness keys of {len(todo)} task(s)")
    return [i for i in ids if i is not None]


def _insert_round(tasks: Sequence[NewTask], todo: list[int], ids: list[int | None]) -> store.Steps:
    """Insert tasks[todo]; fill ids; return the indexes still without an id."""
    batch = [tasks[i] for i in todo]
    if len(batch) == 1:
        t = batch[0]
        rows = yield "insert_task", {
            "name": t.name, "args": t.args, "queue": t.queue, "priority": t.priority,
            "max_attempts": t.max_attempts, "timeout": t.timeout_s, "delay": t.delay_s,
            "run_at": t.run_at, "unique_key": t.unique_key}
    else:
        rows = yield "insert_tasks", _columns(batch)
    plain = iter(sorted(r["id"] for r in rows if r["unique_key"] is None))
    made = {r["unique_key"]: r["id"] for r in rows if r["unique_key"] is not None}
    held = [t.unique_key for t in batch if t.unique_key is not None and t.unique_key not in made]
    if held:
        found = yield "find_unique_tasks", {"keys": held}
        made.update((r["unique_key"], r["id"]) for r in found)
    left = []
    for i, task in zip(todo, batch):
        ids[i] = next(plain) if task.unique_key is None else made.get(task.unique_key)
        if ids[i] is None:
            left.append(i)
    return left


def _staged(tasks: Sequence[NewTask]) -> store.Steps:
    """A large enqueue without uniqueness keys: COPY into a staging table, then one
    INSERT ... SELECT, in one transaction (so one connection, even through a pooler)."""
    yield store.ATOMIC, {}
    yield "stage_tasks", {}
    yield "clear_staged_tasks", {}
    yield "copy_staged_tasks", {"rows": [(i, *t[:_STAGED]) for i, t in enumerate(tasks)]}
    rows = yield "insert_staged_tasks", {}
    return list(rows[0]["ids"])  # drawn in staging order, sorted by the statement


def _columns(tasks: Sequence[NewTask]) -> dict[str, list[Any]]:
    return {
        "names": [t.name for t in tasks], "args": [t.args for t in tasks],
        "queues": [t.queue for t in tasks], "priorities": [t.priority for t in tasks],
        "max_attempts": [t.max_attempts for t in tasks], "timeouts": [t.timeout_s for t in tasks],
        "delays": [t.delay_s for t in tasks], "run_ats": [t.run_at for t in tasks],
        "unique_keys": [t.unique_key for t in tasks],
    }
