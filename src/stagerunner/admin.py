"""Operator commands: inspect and repair tasks and queues (list, show, retry, cancel, purge,
pause, resume, status --watch). Plain functions over ``store``; the CLI only parses
arguments and prints what these return, as a table or as JSON.
"""

from __future__ import annotations

import json
import shutil
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any, TextIO

import psycopg

from stagerunner import store

STATUSES = ("waiting", "running", "success", "error", "timeout", "cancelled")


def status_report(conn: psycopg.Connection[Any], expiry_s: float) -> dict[str, Any]:
    counts = store.count_tasks(conn)
    nodes = store.live_nodes(conn, expiry_s=expiry_s)
    totals = {s: 0 for s in STATUSES}
    for row in counts:
        totals[row["status"]] += row["n"]
    oldest = max((r["oldest_waiting_s"] or 0.0 for r in counts), default=0.0)
    return {"statuses": {k: v for k, v in totals.items() if v}, "queues": counts,
            "nodes_alive": len(nodes), "nodes": nodes, "oldest_waiting_s": round(oldest, 3),
            "paused": [q["name"] for q in store.list_queues(conn) if q["paused"]]}


def format_status(report: dict[str, Any], throughput: float | None = None) -> str:
    totals = report["statuses"]
    lines = ["  ".join(f"{s}={totals.get(s, 0)}" for s in STATUSES)]
    rate = f"  throughput: {throughput:.1f}/s" if throughput is not None else ""
    lines.append(f"nodes alive: {report['nodes_alive']}  oldest waiting: "
                 f"{report['oldest_waiting_s']:.1f}s{rate}")
    if report["paused"]:
        lines.append("paused queues: " + ", ".join(report["paused"]))
    for node in report["nodes"]:
        lines.append(f"  {node['owner']}  queues={node['queues']}  pid={node['pid']}  "
                     f"beat {node['beat_age_s']:.1f}s ago")
    return "\n".join(lines)


def watch(connect: Callable[[], psycopg.Connection[Any]], expiry_s: float, *, interval: float,
          count: int | None, as_json: bool, out: TextIO = sys.stdout) -> None:
    """Print the status every `interval` seconds (`count` times, or until interrupted)."""
    shown = 0
    with connect() as conn:
        while count is None or shown < count:
            report = status_report(conn, expiry_s)
            rate = store.count_finished_since(conn, seconds=interval) / interval
            if as_json:
                out.write(json.dumps({**report, "throughput_per_s": rate}, default=str) + "\n")
            else:
                clear = "\x1b[2J\x1b[H" if out.isatty() else ""
                out.write(clear + time.strftime("%H:%M:%S ") + format_status(report, rate) + "\n\n")
            out.flush()
            shown += 1
            if count is None or shown < count:
                time.sleep(interval)


def table(rows: Sequence[dict[str, Any]], columns: Sequence[str]) -> str:
    """A plain table that fits the terminal: long cells are cut with an ellipsis."""
    if not rows:
        return "(no tasks)"
    width = shutil.get_terminal_size((120, 20)).columns
    cells = [[_cell(r.get(c)) for c in columns] for r in rows]
    widths = [max(len(c), *(len(row[i]) for row in cells)) for i, c in enumerate(columns)]
    budget = max(10, width - sum(widths[:-1]) - 2 * (len(columns) - 1))
    widths[-1] = min(widths[-1], budget)
    lines = ["  ".join(c.upper().ljust(w) for c, w in zip(columns, widths))]
    for row in cells:
        lines.append("  ".join(_fit(v, w).ljust(w) for v, w in zip(row, widths)).rstrip())
    return "\n".join(lines)


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.1f}"
    if hasattr(value, "strftime"):
        return value.strftime("%Y-%m-%d %H:%M:%S")
    return str(value)


def _fit(text: str, width: int) -> str:
    return text if len(text) <= width else text[: width - 1] + "…"


def format_task(task: dict[str, Any]) -> str:
    lines = [f"task {task['id']}  {task['name']}  [{task['status']}]"]
    for key in ("queue", "priority", "attempts", "lost", "max_attempts", "timeout_s", "unique_key",
                "created_at", "run_at", "claimed_by", "claimed_at", "finished_at",
                "cancel_requested_at", "last_run_s"):
        if task.get(key) is not None:
            lines.append(f"  {key:<20} {_cell(task[key])}")
    lines.append(f"  {'args':<20} {json.dumps(task['args'])}")
    if task.get("result") is not None:
        lines.append(f"  {'result':<20} {json.dumps(task['result'])[:2000]}")
    for entry in task.get("errors") or []:
        runtime = entry.get("runtime_ms")
        took = f" after {runtime:.1f} ms" if isinstance(runtime, (int, float)) else ""
        lines.append(f"\n  attempt {entry.get('attempt')}: {entry.get('status')} at "
                     f"{entry.get('at')}{took}")
        lines += ["    " + line for line in str(entry.get("error", "")).rstrip().splitlines()]
    return "\n".join(lines)
