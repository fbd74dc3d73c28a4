"""The read pages: each takes a connection and the request's query values and returns the
template to render with its context. No SQL here (``queries``), no HTTP (``app``).
"""

from __future__ import annotations

import json
import re
import time
from dataclasses import dataclass, replace
from datetime import datetime, timezone
from typing import Any

from stagerunner import cron
from stagerunner.config import Settings
from stagerunner.registry import Spec
from stagerunner.web import charts, filters, queries
from stagerunner.web.filters import TaskFilter, Window
from stagerunner.web.queries import Conn, Row

Page = tuple[str, dict[str, Any]]
OVERVIEW_WINDOW_S = 3600  # the overview's "last hour"
OVERVIEW_BUCKET_S = 60
RUNTIME_WINDOWS = {"1h": 3600, "6h": 6 * 3600, "24h": 86400, "7d": 7 * 86400}
RUNTIME_MAX_ROWS = 20_000  # the runtime view reads at most this many finished tasks
HOT_PRESSURE = 0.05  # a task whose runs are killed or in the deadline's last fifth this often is flagged
CRON_SCAN_IDS = 50_000
CRON_FIRES = 5
_TASK_ID = re.compile(r"^#?(\d{1,18})$")


class NotFound(LookupError):
    """No such page or task."""


class Redirect(Exception):
    """Go to another page instead (the search box was given a task id)."""

    def __init__(self, location: str) -> None:
        super().__init__(location)
        self.location = location


# Overview -------------------------------------------------------------------------------

def overview(conn: Conn, args: dict[str, str], settings: Settings) -> Page:
    queue_rows = queries.queues(conn, window_s=OVERVIEW_WINDOW_S)
    buckets = charts.fill(queries.throughput(conn, window_s=OVERVIEW_WINDOW_S,
                                             bucket_s=OVERVIEW_BUCKET_S), OVERVIEW_WINDOW_S // OVERVIEW_BUCKET_S)
    nodes = [_node(n) for n in queries.nodes(conn)]
    finished = sum(b.total for b in buckets)
    failed = sum(b.failed for b in buckets)
    totals = {key: sum(q[key] for q in queue_rows)
              for key in ("due", "scheduled", "running", "success", "error", "timeout", "cancelled")}
    return "overview.html", {
        "queues": queue_rows, "totals": totals, "nodes": nodes,
        "alive": sum(1 for n in nodes if n["alive"]),
        "chart": charts.throughput(buckets, bucket_s=OVERVIEW_BUCKET_S),
        "finished": finished, "failed": failed,
        "failure_rate": (100.0 * failed / finished) if finished else None,
        "per_minute": finished / (OVERVIEW_WINDOW_S / 60),
        "oldest_s": max((q["oldest_s"] or 0.0 for q in queue_rows), default=0.0),
        "failures": queries.recent_failures(conn, window_s=OVERVIEW_WINDOW_S, limit=10),
        "paused": [q["queue"] for q in queue_rows if q["paused"]],
        "expiry_s": settings.node_expiry,
    }


def _node(row: Row) -> dict[str, Any]:
    info = row["info"]
    return {**row, "info_items": sorted(info.items()) if isinstance(info, dict) else [("info", info)]}


# Tasks ------------------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class Listing:
    rows: list[Row]
    older: int | None  # the "older" link's cursor
    searched_to: int | None  # the lowest id read, when the page stopped short of a full page


def tasks(conn: Conn, args: dict[str, str], settings: Settings) -> Page:
    try:
        f = filters.parse(args)
    except filters.BadFilter as exc:
        return "tasks.html", {"filter": TaskFilter(), "error": str(exc), "listing": Listing([], None, None)}
    found = _TASK_ID.match(f.text or "")
    if found and queries.task(conn, task_id=int(found.group(1))) is not None:
        raise Redirect(f"/tasks/{int(found.group(1))}")
    return "tasks.html", {"filter": f, "error": None, "listing": listing(conn, f)}


def listing(conn: Conn, f: TaskFilter, *, limit: int = filters.PAGE_SIZE,
            budget_s: float = filters.PAGE_BUDGET_S) -> Listing:
    """One page: window after window down from the cursor until full, at the end, or until
    another window would not fit in the time budget (then "older" resumes where it stopped)."""
    started = time.monotonic()
    w = first_window(conn, f)
    rows: list[Row] = []
    while w is not None:
        began = time.monotonic()
        rows += queries.tasks_page(conn, f, w, limit=limit + 1 - len(rows))
        if len(rows) > limit:
            return Listing(rows[:limit], rows[limit - 1]["id"], None)
        if w.exhausted:
            return Listing(rows, None, w.floor)
        now = time.monotonic()
        if now - started + (now - began) > budget_s:  # the next window costs about as much
            return Listing(rows, w.floor, w.floor)
        w = w.older()
    return Listing(rows, None, None)


def first_window(conn: Conn, f: TaskFilter) -> Window | None:
    lo, hi = queries.id_bounds(conn)
    since, until = filters.time_bounds(f)
    return filters.window(f, lo=lo, hi=hi,
                          since_id=queries.id_at(conn, since) if since else None,
                          until_id=queries.id_at(conn, until) if until else None)


def matching_failed_ids(conn: Conn, f: TaskFilter, *, batch: int, cap: int) -> list[int]:
    """Ids of every error/timeout task matching `f` (all pages, not just this one), newest
    first, at most `cap`: what "retry all failed that match" passes to opstore.retry_tasks."""
    statuses = tuple(s for s in (f.statuses or filters.FAILED) if s in filters.FAILED)
    ids: list[int] = []
    w = first_window(conn, replace(f, before=None)) if statuses else None
    while w is not None and len(ids) < cap:
        rows = queries.tasks_page(conn, f, w, limit=batch, statuses=statuses)
        ids += [r["id"] for r in rows]
        # a full batch may have left matches in this window: go on below its last id
        w = replace(w, top=rows[-1]["id"]) if len(rows) == batch else w.older()
    return ids[:cap]


# One task --------------------------------------------------------------------------------

def task(conn: Conn, task_id: int, settings: Settings) -> Page:
    row = queries.task(conn, task_id=task_id)
    if row is None:
        raise NotFound(f"no task {task_id}")
    overshoot = None
    if row["status"] == "timeout" and row["runtime_ms"] is not None and row["deadline_s"] is not None:
        overshoot = row["runtime_ms"] - row["deadline_s"] * 1000
    node_info = row["node_info"]
    return "task.html", {
        "task": row, "overshoot_ms": overshoot, "attempts": [_attempt(e) for e in _entries(row["errors"])],
        "node_info": sorted(node_info.items()) if isinstance(node_info, dict) else [],
        "node_alive": bool(row["node_alive"]),
        "default_deadline_s": min(settings.job_timeout, settings.max_job_timeout),
    }


def task_json(conn: Conn, task_id: int) -> str:
    row = queries.task(conn, task_id=task_id)
    if row is None:
        raise NotFound(f"no task {task_id}")
    return json.dumps(row, default=str, indent=2)


def _entries(errors: Any) -> list[Any]:
    return errors if isinstance(errors, list) else [errors] if errors else []


def _attempt(entry: Any) -> dict[str, Any]:
    """One failed attempt from the errors history, whatever shape a hostile row gave it."""
    if not isinstance(entry, dict):
        return {"attempt": None, "status": "?", "at": None, "runtime_ms": None, "error": json.dumps(entry)}
    runtime = entry.get("runtime_ms")
    error = entry.get("error")
    return {"attempt": entry.get("attempt"), "status": str(entry.get("status", "?")),
            "at": entry.get("at"), "runtime_ms": runtime if isinstance(runtime, (int, float)) else None,
            "error": error if isinstance(error, str) else json.dumps(error)}


# Runtimes --------------------------------------------------------------------------------

def runtimes(conn: Conn, args: dict[str, str], settings: Settings) -> Page:
    window = wanted if (wanted := args.get("window", "")) in RUNTIME_WINDOWS else "1h"
    rows = queries.runtimes(conn, window_s=RUNTIME_WINDOWS[window], max_rows=RUNTIME_MAX_ROWS,
                            job_timeout=settings.job_timeout, max_job_timeout=settings.max_job_timeout)
    names = sorted((_runtime(r) for r in rows), key=lambda r: (-r["pressure"], -r["runs"], r["name"]))
    return "runtimes.html", {"rows": names, "window": window, "windows": list(RUNTIME_WINDOWS),
                             "capped": sum(r["runs"] for r in rows) >= RUNTIME_MAX_ROWS,
                             "max_rows": RUNTIME_MAX_ROWS}


def _runtime(row: Row) -> dict[str, Any]:
    p50, p95, p99 = row["percentiles_ms"] or (None, None, None)
    runs = row["runs"] or 1
    pressure = (row["timeout"] + row["near_deadline"]) / runs
    return {**row, "p50_ms": p50, "p95_ms": p95, "p99_ms": p99, "pressure": pressure,
            "hot": pressure >= HOT_PRESSURE, "histogram_svg": charts.histogram(row["histogram"])}


# Cron --------------------------------------------------------------------------------------

def cron_page(conn: Conn, specs: list[Spec], load_error: str | None) -> Page:
    ticks = {r["name"]: r for r in queries.periodic(conn, scan=CRON_SCAN_IDS)}
    now = datetime.now(timezone.utc)
    entries = [{"name": s.name, "expr": s.cron, "queue": s.queue, "fires": _fires(s.cron or "", now),
                "tick": ticks.get(s.name)} for s in sorted(specs, key=lambda s: s.name)]
    known = {s.name for s in specs}
    others = [row for name, row in sorted(ticks.items()) if name not in known]
    return "cron.html", {"entries": entries, "others": others, "load_error": load_error}


def _fires(expr: str, now: datetime) -> list[datetime]:
    schedule = cron.parse(expr)
    fires, t = [], now
    for _ in range(CRON_FIRES):
        t = schedule.next_after(t)
        fires.append(t)
    return fires
