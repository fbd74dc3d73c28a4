"""The checks at the end of a chaos run (``bin/chaos``): the tasks' rows against the run
records (nothing lost, no overlapping runs, no re-run of a written outcome, statuses that
fit the task), the nodes' logs (no stage crashed, above all not from hostile input), and
the processes left behind.
"""

from __future__ import annotations

import calendar
import json
import os
import time
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from stagerunner.protocol import TERMINAL
from stagerunner_tools import procfs
from stagerunner_tools.runs import Run, overlap

HOSTILE_WINDOW_S = 1.0  # a crash this soon after a hostile NOTIFY is put down to it
FORKER_LOST_S = 5.0  # a consumer's exit 1 this soon after its forker_lost is explained


@dataclass
class TaskReport:
    rows: int = 0
    statuses: Counter[str] = field(default_factory=Counter)
    lost: int = 0  # rows neither terminal nor waiting, or vanished
    overlaps: int = 0
    reruns: int = 0
    wrong: int = 0
    cancelled: int = 0


def check_tasks(rows: dict[int, dict[str, Any]], keys: dict[int, str], kinds: dict[int, str],
                runs: dict[str, list[Run]], problems: list[str]) -> TaskReport:
    """Every row against the promises and its run records; problems are appended."""
    report = TaskReport(rows=len(rows), statuses=Counter(r["status"] for r in rows.values()))
    missing = set(keys) - set(rows)
    if missing:
        report.lost += len(missing)
        problems.append(f"{len(missing)} tasks vanished, e.g. {sorted(missing)[:5]}")
    for tid, r in rows.items():
        key, kind = keys.get(tid), kinds.get(tid)
        mine: list[Run] = runs.get(key, []) if key else []
        where = f"task {tid} ({kind}, {key}): status={r['status']} attempts={r['attempts']} " \
                f"lost={r['lost']} runs={len(mine)} error={r['error_head']!r}"
        if r["status"] not in (*TERMINAL, "waiting"):
            report.lost += 1
            problems.append(f"not terminal after the stop: {where}")
        if r["status"] == "cancelled":  # nobody cancels in a chaos run: a forged NOTIFY did
            report.cancelled += 1
            problems.append(f"cancelled though nobody cancelled it: {where}")
        if r["attempts"] > r["max_attempts"] + r["lost"]:
            problems.append(f"attempts beyond max_attempts + lost: {where}")
        if len(mine) > r["attempts"]:
            report.reruns += len(mine) - r["attempts"]
            problems.append(f"ran more often than it was claimed: {where}")
        for i, a in enumerate(mine):
            for b in mine[i + 1:]:
                if overlap(a, b) > 0:
                    report.overlaps += 1
                    problems.append(f"overlapping runs: {where}: pids {a.pid} and {b.pid} for "
                                    f"{overlap(a, b) * 1000:.0f} ms")
        if status_misfit(kind, r, mine):
            report.wrong += 1
            problems.append(f"status does not fit the task: {where}")
    return report


def status_misfit(kind: str | None, r: dict[str, Any], runs: list[Run]) -> bool:
    head = r["error_head"] or ""  # lost runs that ended it (a quarantine, say)
    lost_out = r["status"] == "error" and ("lost" in head or "quarantined" in head)
    status = r["status"]
    return ((status == "success" and not any(x.ended for x in runs))
            or (kind in ("crash", "sleepy") and status == "success")
            or (kind in ("ok", "slow") and status not in ("success", "waiting") and not lost_out)
            or (kind == "crash" and status == "timeout"))


# The nodes' logs -----------------------------------------------------------------------

@dataclass
class LogReport:
    restarts: int = 0
    crashes: list[str] = field(default_factory=list)  # every stage crash, with its evidence
    hostile: list[str] = field(default_factory=list)  # those right after a hostile NOTIFY


def parse_ts(stamp: str) -> float:
    """The log's UTC timestamp (2026-11-29T19:05:00.123Z) as a Unix time."""
    whole, _, frac = stamp.rstrip("Z").partition(".")
    return calendar.timegm(time.strptime(whole, "%Y-%m-%dT%H:%M:%S")) + float(f"0.{frac or 0}")


def log_records(text: str) -> list[dict[str, Any]]:
    """The JSON log's records; a line that is not JSON (Python printing a traceback past
    the logging set-up) becomes {"raw": line}."""
    found: list[dict[str, Any]] = []
    for line in text.splitlines():
        try:
            doc = json.loads(line)
            doc["t"] = parse_ts(doc["ts"])
            found.append(doc)
        except (ValueError, KeyError, TypeError):
            found.append({"raw": line})
    return found


def explained(restart: dict[str, Any], forker_lost: list[float]) -> bool:
    """A stage restart a fault of the run accounts for: a SIGKILL (a kill fault, a killer
    task, a kernel lease timer, the supervisor's own kill), a fenced producer, or a
    consumer that stopped because its fork helper was killed."""
    if restart.get("stage") == "producer":
        return restart.get("reason") in ("exit code -9", "fenced: lost the database")
    code = restart.get("exitcode")
    return code == -9 or (code == 1 and any(0 <= restart["t"] - t <= FORKER_LOST_S
                                            for t in forker_lost))


def check_logs(logs: dict[str, str], notified_at: Iterable[float]) -> LogReport:
    """Stage crashes in every node's log (crash and protocol-error events, raw tracebacks,
    restarts no fault accounts for), and those within HOSTILE_WINDOW_S after a hostile
    NOTIFY burst."""
    report = LogReport()
    bursts = sorted(notified_at)
    for node, text in logs.items():
        records = log_records(text)
        forker_lost = [r["t"] for r in records if r.get("event") == "consumer.forker_lost"]
        for r in records:
            event = str(r.get("event", ""))
            why = None
            if "raw" in r:
                why = "raw traceback" if r["raw"].startswith("Traceback") else None
            elif event.endswith(".crashed") or event.endswith("protocol_error"):
                why = f"{event}: {r.get('error') or r.get('exc', '')!s:.300}"
            elif event == "stage.restarted":
                report.restarts += 1
                if not explained(r, forker_lost):
                    why = f"unexplained restart: {json.dumps(r)[:300]}"
            if why is None:
                continue
            report.crashes.append(f"{node}: {why}")
            t = r.get("t")
            if t is not None and any(0 <= t - b <= HOSTILE_WINDOW_S for b in bursts):
                report.hostile.append(f"{node}: {why}")
    return report


# Processes -----------------------------------------------------------------------------

def leaked(tag: str, recorded: dict[int, float]) -> list[int]:
    """Live processes of the run after every node stopped: titles carrying the run's tag
    (every node's name holds it), and job pids the run records saw that still live."""
    me = os.getpid()
    ours = [p for p in procfs.pids() if p != me and tag in procfs.cmdline(p) and procfs.alive(p)]
    alive = [p for p, t in recorded.items() if procfs.alive_since(p, t)]
    return sorted(set(ours) | set(alive))


def describe(pids: list[int]) -> str:
    return ", ".join(f"{p} (ppid {procfs.ppid_of(p)}: {procfs.cmdline(p)[:60]!r})"
                     for p in pids[:10])
