"""Operator commands: inspect and repair tasks and queues (status [--watch], list, show,
retry, cancel, purge, pause, resume). Plain functions over ``store``; ``cli`` parses the
arguments, and each command prints a table or, with ``--json``, JSON.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any, TextIO

import psycopg

from stagerunner import opstore, store
from stagerunner.logs import printable
from stagerunner.protocol import Status

STATUSES = tuple(s.value for s in Status)


def status_report(conn: psycopg.Connection[Any]) -> dict[str, Any]:
    """Counts per status (finished ones exact on a small table, estimated on a large one:
    `status` stays cheap whatever the retention), live nodes, the oldest due waiting age."""
    live = opstore.count_live_tasks(conn)
    finished = opstore.count_finished_tasks(conn)
    totals = {s: 0 for s in STATUSES}
    for row in [*live, *finished]:
        totals[row["status"]] += row["n"]
    oldest = max((r["oldest_waiting_s"] or 0.0 for r in live), default=0.0)
    nodes = opstore.live_nodes(conn)
    return {"statuses": {k: v for k, v in totals.items() if v}, "queues": live,
            "estimated": not all(r["exact"] for r in finished),
            "nodes_alive": len(nodes), "nodes": nodes, "oldest_waiting_s": round(oldest, 3),
            "paused": [q["name"] for q in opstore.list_queues(conn) if q["paused"]]}


def format_status(report: dict[str, Any], throughput: float | None = None) -> str:
    totals = report["statuses"]
    approx = "~" if report.get("estimated") else ""
    lines = ["  ".join(f"{s}={approx if s not in ('waiting', 'running') else ''}{totals.get(s, 0)}"
                       for s in STATUSES)]
    rate = f"  throughput: {throughput:.1f}/s" if throughput is not None else ""
    lines.append(f"nodes alive: {report['nodes_alive']}  oldest waiting: "
                 f"{report['oldest_waiting_s']:.1f}s{rate}")
    if report["paused"]:
        lines.append("paused queues: " + ", ".join(map(_cell, report["paused"])))
    for node in report["nodes"]:
        lines.append(f"  {_cell(node['owner'])}  queues={_cell(node['queues'])}  "
                     f"pid={node['pid']}  beat {node['beat_age_s']:.1f}s ago")
    return "\n".join(lines)


def watch(connect: Callable[[], psycopg.Connection[Any]], *, interval: float,
          count: int | None, as_json: bool, out: TextIO = sys.stdout) -> None:
    """Print the status every `interval` seconds (`count` times, or until interrupted)."""
    shown = 0
    with connect() as conn:
        while count is None or shown < count:
            report = status_report(conn)
            rate = opstore.count_finished_since(conn, seconds=interval) / interval
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
    """A value as one line of text; any role may have written it, so a terminal control in
    it (an escape sequence, a carriage return) is shown escaped, never acted on."""
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.1f}"
    if hasattr(value, "strftime"):
        return value.strftime("%Y-%m-%d %H:%M:%S")
    return printable(str(value))


def _fit(text: str, width: int) -> str:
    return text if len(text) <= width else text[: width - 1] + "…"


def format_task(task: dict[str, Any]) -> str:
    lines = [f"task {task['id']}  {_cell(task['name'])}  [{_cell(task['status'])}]"]
    for key in ("queue", "priority", "attempts", "lost", "max_attempts", "timeout_s", "unique_key",
                "created_at", "run_at", "claimed_by", "claimed_at", "finished_at",
                "cancel_requested_at", "last_run_s"):
        if task.get(key) is not None:
            lines.append(f"  {key:<20} {_cell(task[key])}")
    lines.append(f"  {'args':<20} {json.dumps(task['args'])}")
    if task.get("result") is not None:
        lines.append(f"  {'result':<20} {json.dumps(task['result'])[:2000]}")
    errors = task.get("errors") or []
    for entry in errors if isinstance(errors, list) else [errors]:
        if not isinstance(entry, dict) or not entry.keys() & {"attempt", "error"}:
            entry = {"error": json.dumps(entry)}  # written by hand: shown as it is
        runtime = entry.get("runtime_ms")
        took = f" after {runtime:.1f} ms" if isinstance(runtime, (int, float)) else ""
        lines.append(f"\n  attempt {_cell(entry.get('attempt'))}: {_cell(entry.get('status'))} "
                     f"at {_cell(entry.get('at'))}{took}")
        lines += ["    " + _cell(line) for line in str(entry.get("error", "")).rstrip().splitlines()]
    return "\n".join(lines)


# Commands (the CLI parses the arguments; each returns its exit code) ------------------

def _connect(settings: Any) -> psycopg.Connection[Any]:
    from stagerunner import database, migrations

    db = database.open_database(settings)
    conn = store.connect(db.dsn, pooled=settings.pooled)
    migrations.check_schema(conn)
    return conn


def _emit(args: argparse.Namespace, data: Any, text: str) -> int:
    print(json.dumps(data, default=str) if getattr(args, "json", False) else text)
    return 0


def cmd_status(settings: Any, args: argparse.Namespace) -> int:
    if args.watch:
        watch(lambda: _connect(settings), interval=args.interval,
              count=args.count, as_json=args.json)
        return 0
    with _connect(settings) as conn:
        report = status_report(conn)
    return _emit(args, report, format_status(report))


def cmd_list(settings: Any, args: argparse.Namespace) -> int:
    from stagerunner.config import parse_duration

    older = parse_duration(args.older_than) if args.older_than else None
    newer = parse_duration(args.newer_than) if args.newer_than else None
    with _connect(settings) as conn:
        rows = opstore.list_tasks(conn, status=args.status, queue=args.queue, name=args.name,
                                older_s=older, newer_s=newer, limit=args.limit)
    columns = ["id", "status", "name", "queue", "attempts", "created_at", "error_head"]
    return _emit(args, rows, table(rows, columns))


def cmd_show(settings: Any, args: argparse.Namespace) -> int:
    with _connect(settings) as conn:
        task = opstore.get_task(conn, task_id=args.id)
    if task is None:
        print(f"stagerunner: no task {args.id}", file=sys.stderr)
        return 1
    return _emit(args, task, format_task(task))


def cmd_retry(settings: Any, args: argparse.Namespace) -> int:
    if not args.ids and not args.failed:
        print("stagerunner: retry needs task ids or --failed", file=sys.stderr)
        return 2
    with _connect(settings) as conn:
        ids, held = opstore.retry_tasks(conn, ids=args.ids, failed=args.failed)
    text = f"{len(ids)} task(s) back to waiting: " + " ".join(map(str, ids))
    if held:
        text += (f"\n{len(held)} task(s) skipped: their unique key is held by another waiting "
                 "or running task: " + " ".join(map(str, held)))
    return _emit(args, {"retried": ids, "skipped_unique_key_held": held}, text)


def cmd_cancel(settings: Any, args: argparse.Namespace) -> int:
    with _connect(settings) as conn:
        changed = dict(opstore.cancel_tasks(conn, ids=args.ids))
    missing = [i for i in args.ids if i not in changed]
    lines = [f"{i}: {'cancelled' if st == 'cancelled' else 'cancel requested (running)'}"
             for i, st in changed.items()]
    lines += [f"{i}: not waiting or running; unchanged" for i in missing]
    return _emit(args, {"cancelled": changed, "unchanged": missing}, "\n".join(lines))


def cmd_purge(settings: Any, args: argparse.Namespace) -> int:
    from stagerunner.config import parse_duration

    older = parse_duration(args.older_than)
    deleted = 0
    with _connect(settings) as conn:
        while (n := opstore.purge_tasks(conn, older_s=older, batch=1000)) > 0:
            deleted += n
    return _emit(args, {"deleted": deleted}, f"{deleted} finished task(s) deleted")


def cmd_pause(settings: Any, args: argparse.Namespace) -> int:
    paused = args.command == "pause"
    with _connect(settings) as conn:
        opstore.pause_queue(conn, queue=args.queue, paused=paused)
    state = "paused" if paused else "resumed"
    return _emit(args, {"queue": args.queue, "paused": paused}, f"queue {args.queue} {state}")


COMMANDS = {"status": cmd_status, "list": cmd_list, "show": cmd_show, "retry": cmd_retry,
            "cancel": cmd_cancel, "purge": cmd_purge, "pause": cmd_pause, "resume": cmd_pause}
