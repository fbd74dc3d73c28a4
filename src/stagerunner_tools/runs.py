"""Run records: jobs append start / tick / end lines to a file, and the tests and the
chaos run read them back to prove that no task ran twice at once.

The writer (``mark``) runs inside job children: stdlib only, one ``write`` per line so
that concurrent runs never interleave. The reader groups lines into runs (one per task
key and job pid) and finds overlaps: two runs of one key overlap when one started
before the other's last sign of life.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any


def mark(path: str, key: str, event: str) -> None:
    """Append one record line: this job child's pid, the key, the event, the time. The
    machine's true time: a node whose wall clock a test skewed (``skewclock.c``) says by
    how much, so that its runs compare with the others'."""
    true_time = time.time() - float(os.environ.get("SKEWCLOCK_OFFSET_S") or 0)
    line = json.dumps({"key": key, "pid": os.getpid(), "event": event, "t": true_time}) + "\n"
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, line.encode())
    finally:
        os.close(fd)


def alive_for(path: str, key: str, seconds: float, tick: float = 0.05) -> None:
    """Sleep `seconds`, marking a tick every `tick` seconds (signs of life)."""
    end = time.monotonic() + seconds
    while (left := end - time.monotonic()) > 0:
        time.sleep(min(tick, left))
        mark(path, key, "tick")


@dataclass
class Run:
    key: str
    pid: int
    start: float
    last: float  # the last sign of life: its end, or its last tick
    ended: bool


@dataclass
class Records:
    path: Path

    def lines(self) -> tuple[list[dict[str, Any]], list[str]]:
        """The records, and the lines that did not parse (a torn write would be a bug)."""
        if not self.path.exists():
            return [], []
        good, torn = [], []
        for line in self.path.read_text().splitlines():
            if not line.strip():
                continue
            try:
                good.append(json.loads(line))
            except ValueError:
                torn.append(line)
        return good, torn

    def runs(self) -> dict[str, list[Run]]:
        """Runs per key, oldest first."""
        by: dict[tuple[str, int], Run] = {}
        for d in self.lines()[0]:
            k = (d["key"], d["pid"])
            if d["event"] == "start":
                by[k] = Run(d["key"], d["pid"], d["t"], d["t"], False)
            elif k in by:
                by[k].last = max(by[k].last, d["t"])
                by[k].ended = by[k].ended or d["event"] == "end"
        out: dict[str, list[Run]] = {}
        for run in sorted(by.values(), key=lambda r: r.start):
            out.setdefault(run.key, []).append(run)
        return out

    def pids(self) -> dict[int, float]:
        """Every job pid that recorded a run -> when it was seen alive (its first line)."""
        seen: dict[int, float] = {}
        for d in self.lines()[0]:
            seen.setdefault(int(d["pid"]), float(d["t"]))
        return seen

    def running_now(self) -> list[Run]:
        """Runs that started, have not ended, and whose job process is still the one that
        started them."""
        from stagerunner_tools.procfs import alive_since  # readers only: jobs never need it

        return [r for rs in self.runs().values() for r in rs
                if not r.ended and alive_since(r.pid, r.start)]


def overlap(a: Run, b: Run) -> float:
    """Seconds during which both runs were alive (0 when they did not overlap)."""
    return max(0.0, min(a.last, b.last) - max(a.start, b.start))
