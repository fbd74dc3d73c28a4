"""The operator's statements, and the application's reads of its tasks: list, show,
retry, cancel, purge, pause, and the counts ``status``, the metrics and the dashboard
show. Like ``store``, one function per file in ``sql/``; the node's own transitions
(claim, finish, release, leases) stay in ``store``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import psycopg

from stagerunner.store import query


def list_tasks(conn: psycopg.Connection[Any], *, status: str | None = None, queue: str | None = None,
               name: str | None = None, older_s: float | None = None, newer_s: float | None = None,
               limit: int = 50) -> list[dict[str, Any]]:
    return query(conn, "list_tasks", {"status": status, "queue": queue, "name": name,
                                     "older_s": older_s, "newer_s": newer_s, "limit": limit})


def get_task(conn: psycopg.Connection[Any], *, task_id: int) -> dict[str, Any] | None:
    rows = query(conn, "get_task", {"id": task_id})
    return rows[0] if rows else None


def retry_tasks(conn: psycopg.Connection[Any], *, ids: Sequence[int] = (), failed: bool = False
                ) -> tuple[list[int], list[int]]:
    """error | timeout | cancelled -> waiting (by id, or all failed ones); (the ids retried,
    the ids skipped because their uniqueness key is held by another task)."""
    rows = query(conn, "retry_tasks", {"ids": list(ids), "failed": failed})
    return [r["id"] for r in rows if r["retried"]], [r["id"] for r in rows if not r["retried"]]


def purge_tasks(conn: psycopg.Connection[Any], *, older_s: float | None, batch: int = 1000,
                exclusive: bool = False, failed_older_s: float | None = -1.0) -> int:
    """Delete up to `batch` finished tasks older than `older_s` (failed ones: than
    `failed_older_s`, by default the same; None keeps that kind); returns how many."""
    return len(query(conn, "purge_tasks", {"older_s": older_s, "batch": batch, "exclusive": exclusive,
                                          "failed_older_s": older_s if failed_older_s == -1.0
                                          else failed_older_s}))


def pause_queue(conn: psycopg.Connection[Any], *, queue: str, paused: bool) -> None:
    query(conn, "pause_queue", {"queue": queue, "paused": paused})


def list_queues(conn: psycopg.Connection[Any]) -> list[dict[str, Any]]:
    return query(conn, "list_queues")


def count_finished_since(conn: psycopg.Connection[Any], *, seconds: float) -> int:
    return int(query(conn, "count_finished_since", {"seconds": seconds})[0]["n"])


def count_live_tasks(conn: psycopg.Connection[Any]) -> list[dict[str, Any]]:
    """Waiting and running tasks per queue (and the oldest due waiting age)."""
    return query(conn, "count_live_tasks")


def count_finished_tasks(conn: psycopg.Connection[Any], *, exact_below: int = 100_000
                         ) -> list[dict[str, Any]]:
    """Finished tasks per status: exact on a small table, estimated on a large one."""
    return query(conn, "count_finished_tasks", {"exact_below": exact_below})


def cancel_tasks(conn: psycopg.Connection[Any], *, ids: Sequence[int]) -> list[tuple[int, str]]:
    """waiting -> cancelled; running -> cancel requested (its owner kills it). (id, status)."""
    return [(r["id"], r["status"]) for r in query(conn, "cancel_tasks", {"ids": list(ids)})]


def live_nodes(conn: psycopg.Connection[Any]) -> list[dict[str, Any]]:
    return query(conn, "live_nodes")
