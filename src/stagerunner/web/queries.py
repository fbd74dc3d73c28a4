"""What the dashboard reads: one function per ``sql/web_*.sql`` file, named after it.

Writes are not here: actions call the runner's own transitions in ``store`` (retry,
cancel, pause, purge), so each transition keeps one home.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

import psycopg

from stagerunner import store
from stagerunner.web.filters import TaskFilter, Window, like

Conn = psycopg.Connection[Any]
Row = dict[str, Any]


def session(conn: Conn, *, timeout_ms: int) -> None:
    store.query(conn, "web_session", {"timeout_ms": timeout_ms})


def queues(conn: Conn, *, window_s: float) -> list[Row]:
    return store.query(conn, "web_queues", {"window_s": window_s})


def throughput(conn: Conn, *, window_s: float, bucket_s: float) -> list[Row]:
    return store.query(conn, "web_throughput", {"window_s": window_s, "bucket_s": bucket_s})


def nodes(conn: Conn, *, limit: int = 100) -> list[Row]:
    return store.query(conn, "web_nodes", {"limit": limit})


def recent_failures(conn: Conn, *, window_s: float, limit: int) -> list[Row]:
    return store.query(conn, "web_recent_failures", {"window_s": window_s, "limit": limit})


def id_bounds(conn: Conn) -> tuple[int | None, int | None]:
    row = store.query(conn, "web_id_bounds")[0]
    return row["lo"], row["hi"]


def id_at(conn: Conn, at: datetime) -> int | None:
    return store.query(conn, "web_id_at", {"at": at})[0]["id"]


def tasks_page(conn: Conn, f: TaskFilter, w: Window, *, limit: int,
               statuses: tuple[str, ...] | None = None) -> list[Row]:
    """Up to `limit` matching tasks in the window, newest first (`statuses` narrows the
    filter's own, for "retry every failed task that matches")."""
    return store.query(conn, "web_tasks_page", {
        "before": w.top, "floor": w.floor, "limit": limit,
        "statuses": list(statuses if statuses is not None else f.statuses or ()) or None,
        "queue": f.queue, "name": like(f.name), "text": like(f.text),
        "since": f.since, "until": f.until})


def task(conn: Conn, *, task_id: int) -> Row | None:
    rows = store.query(conn, "web_task", {"id": task_id})
    return rows[0] if rows else None


def runtimes(conn: Conn, *, window_s: float, max_rows: int, job_timeout: float,
             max_job_timeout: float) -> list[Row]:
    return store.query(conn, "web_runtimes", {
        "window_s": window_s, "max_rows": max_rows, "job_timeout": job_timeout,
        "max_job_timeout": max_job_timeout})


def periodic(conn: Conn, *, scan: int) -> list[Row]:
    return store.query(conn, "web_periodic", {"scan": scan})
