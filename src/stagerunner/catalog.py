"""The task catalog: what nodes publish about their tasks, and what an enqueuing process
that never imported a task module learns from it.

A node writes every task of its STAGERUNNER_TASK_MODULES (name, queue, priority,
attempts, timeout) to ``stagerunner.task_catalog`` at start. ``client`` reads it, once
per process and database and again when it is older than ``TTL_S`` (or, at most once a
``MISS_TTL_S``, when a name is missing), so enqueue by name keeps its one statement.
A name that is neither registered in this process nor in a non-empty catalog is
refused at enqueue; with an empty catalog (no node ever started) it is accepted.
"""

from __future__ import annotations

import difflib
import logging
import time
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any

from stagerunner.errors import UnknownTask

if TYPE_CHECKING:
    import psycopg

    from stagerunner import registry, store

log = logging.getLogger(__name__)
TTL_S = 30.0
MISS_TTL_S = 1.0
_cache: dict[str, tuple[float, dict[str, dict[str, Any]]]] = {}


def publish(conn: psycopg.Connection[Any], node: str, specs: Sequence[registry.Spec]) -> None:
    """A node's registered tasks -> the catalog (sql/publish_catalog.sql, an upsert)."""
    from stagerunner import store

    store.query(conn, "publish_catalog", {
        "node": node, "names": [s.name for s in specs], "queues": [s.queue for s in specs],
        "priorities": [s.priority for s in specs],
        "max_attempts": [s.max_attempts for s in specs],
        "timeouts": [s.timeout for s in specs], "asyncs": [s.is_async for s in specs]})


def entries(key: str, names: Iterable[str]) -> store.Steps:
    """The catalog of database `key` ({name: row}), read when this process has none, it
    is stale, or a wanted name is missing from a copy older than MISS_TTL_S."""
    now = time.monotonic()
    cached = _cache.get(key)
    if cached is not None:
        age = now - cached[0]
        if age < TTL_S and (age < MISS_TTL_S or all(n in cached[1] for n in names)):
            return cached[1]
    rows = yield "read_catalog", {}
    known = {r["name"]: r for r in rows}
    _cache[key] = (now, known)
    return known


def reloaded(modules: Sequence[str]) -> list[registry.Spec] | None:
    """A reloaded node's tasks, for its new producer to publish once it registers, so that
    enqueue by name elsewhere knows the code the new consumers run (the supervisor's
    copies are the code it started with). None when there is nothing to publish (not a
    reload), or when the modules do not import: the consumers fail on them and say why,
    and the catalog keeps the tasks it had."""
    from stagerunner import registry

    if not modules:
        return None
    try:
        registry.load(modules)
    except Exception as exc:
        log.error("the reloaded task modules do not import; the task catalog is unchanged",
                  extra={"event": "catalog.stale", "error": f"{type(exc).__name__}: {exc}"[:500]})
        return None
    return registry.specs(modules)


def check_known(name: str, known: dict[str, dict[str, Any]]) -> dict[str, Any] | None:
    """The catalog row for `name`; UnknownTask if the catalog is known and lacks it."""
    row = known.get(name)
    if row is None and known:
        close = difflib.get_close_matches(name, list(known), n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        raise UnknownTask(f"unknown task {name!r}: no node publishes a task of that name "
                          f"(the task catalog lists {len(known)}){hint}")
    return row


def forget() -> None:
    """Drop the cached catalogs (tests; a process that knows a deploy just happened)."""
    _cache.clear()
