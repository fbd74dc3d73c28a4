"""The runner's promises, checked against the database and the run records: nothing lost
(every task terminal, or waiting), attempts within their bounds, no two runs of one task
alive at once, every success a run that ended. The fault tests and the chaos run both
check with these.

Harness code: it reads the tasks table directly.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import psycopg
from psycopg.rows import dict_row

from stagerunner.protocol import TERMINAL
from stagerunner_tools.runs import Records, Run, overlap

FINISHED = tuple(s.value for s in TERMINAL)


def insert_rows(conn: psycopg.Connection[Any], name: str, args_list: Sequence[Any],
                **cols: Any) -> list[int]:
    """One INSERT of many rows, straight into the table (as an application or an attacker
    could, past every check the client makes)."""
    if not args_list:
        return []
    names = ", ".join(["name", "args", *cols])
    row = ", ".join(["%s", "%s::jsonb", *(["%s"] * len(cols))])
    values = ", ".join([f"({row})"] * len(args_list))
    params: list[Any] = []
    for args in args_list:
        params += [name, json.dumps(args), *cols.values()]
    found = conn.execute(f"INSERT INTO stagerunner.tasks ({names}) VALUES {values} RETURNING id",
                         params).fetchall()
    return [r[0] for r in found]


def rows(conn: psycopg.Connection[Any], ids: Sequence[int]) -> dict[int, dict[str, Any]]:
    cur = conn.cursor(row_factory=dict_row)
    found = cur.execute(  # not args: a hostile row's args may not even load in Python
        "SELECT id, name, queue, status::text AS status, attempts, lost, kills, max_attempts, timeout_s, "
        "run_at, result, last_error, errors, claimed_by, claimed_at, finished_at "
        "FROM stagerunner.tasks WHERE id = ANY(%s)", [list(ids)]).fetchall()
    return {r["id"]: r for r in found}


def count_in(conn: psycopg.Connection[Any], ids: Sequence[int], statuses: Iterable[str]) -> int:
    row = conn.execute("SELECT count(*) FROM stagerunner.tasks WHERE id = ANY(%s) "
                       "AND status::text = ANY(%s)", [list(ids), list(statuses)]).fetchone()
    return int(row[0]) if row else 0


class NodeExited(Exception):
    """Raised (not asserted, so a retrying wait does not wait it out) when a node exits."""


def check_alive(node: Any) -> None:
    if node is not None and node.proc.poll() is not None:
        raise NodeExited(f"the node exited with {node.proc.returncode}")


def wait_terminal(conn: psycopg.Connection[Any], ids: Sequence[int], timeout: float = 60,
                  node: Any = None) -> None:
    """Until every task of `ids` is finished; NodeExited at once if `node` exits."""
    deadline = time.monotonic() + timeout
    while count_in(conn, ids, FINISHED) != len(ids):
        check_alive(node)
        if time.monotonic() > deadline:
            raise AssertionError(f"{len(ids) - count_in(conn, ids, FINISHED)} of {len(ids)} "
                                 f"tasks not finished within {timeout:g} s")
        time.sleep(0.1)


def row_problems(r: dict[str, Any], *, allow_waiting: bool = False) -> list[str]:
    """What is wrong with one row after the dust settled."""
    problems = []
    allowed = FINISHED + (("waiting",) if allow_waiting else ())
    if r["status"] not in allowed:
        problems.append(f"neither finished nor waiting: {r['status']}")
    if r["attempts"] - r["lost"] > r["max_attempts"]:
        problems.append(f"attempts {r['attempts']} - lost {r['lost']} > max {r['max_attempts']}")
    if r["status"] == "success" and (r["finished_at"] is None or not r["claimed_by"]):
        problems.append("a success without its finish time or owner")
    return problems


def run_problems(runs: Sequence[Run], r: dict[str, Any]) -> list[str]:
    """What the run records of one task say against its row: no two runs alive at once, no
    more runs than claims, a success that ran to its end."""
    problems = []
    for i, a in enumerate(runs):
        for b in runs[i + 1:]:
            if overlap(a, b) > 0:
                problems.append(f"overlapping runs: pid {a.pid} and {b.pid} for "
                                f"{overlap(a, b) * 1000:.0f} ms")
    if len(runs) > r["attempts"]:
        problems.append(f"ran {len(runs)} times on {r['attempts']} claims")
    if r["status"] == "success" and not any(run.ended for run in runs):
        problems.append("a success without a run that ended")
    return problems


def check_rows(conn: psycopg.Connection[Any], ids: Sequence[int], *, allow_waiting: bool = False
               ) -> dict[int, dict[str, Any]]:
    """Nothing lost; attempts as documented. Returns the rows (AssertionError otherwise)."""
    found = rows(conn, ids)
    assert set(found) == set(ids), f"rows vanished: {set(ids) - set(found)}"
    bad = {i: p for i, r in found.items() if (p := row_problems(r, allow_waiting=allow_waiting))}
    assert not bad, f"rows break the promises: {bad}"
    return found


@dataclass
class Recorder(Records):
    """The run records of one test; one key per task of tests.tasks:record."""

    keys: dict[int, str] = field(default_factory=dict)

    def args(self, key: str, seconds: float = 0.0) -> list[Any]:
        return [str(self.path), key, seconds]

    def enqueue(self, conn: psycopg.Connection[Any], count: int, seconds: float, prefix: str = "k",
                **cols: Any) -> list[int]:
        base = len(self.keys)
        keys = [f"{prefix}{base + i}" for i in range(count)]
        ids = insert_rows(conn, "tests.tasks:record", [self.args(k, seconds) for k in keys], **cols)
        self.keys.update(zip(ids, keys))
        return ids

    def check(self, conn: psycopg.Connection[Any], ids: list[int] | None = None
              ) -> dict[str, list[Run]]:
        """No overlaps; every run was a claim; a success ran to its end."""
        runs = self.runs()
        found = rows(conn, ids if ids is not None else list(self.keys))
        problems = {i: p for i, r in found.items()
                    if (p := run_problems(runs.get(self.keys[i], []), r))}
        assert not problems, f"run records break the promises: {problems}"
        return runs
