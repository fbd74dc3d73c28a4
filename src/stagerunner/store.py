"""Every SQL call stagerunner makes: one small function per file in ``sql/``, named
after it. Callers never see SQL. At log level debug each query is logged with its
timing, like Ecto's ``QUERY OK db=0.4ms`` lines in the tutorial.
"""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from importlib import resources
from typing import Any

import psycopg
from psycopg.rows import dict_row

from stagerunner.demand import Claim
from stagerunner.protocol import Task

log = logging.getLogger(__name__)


@functools.cache
def _sql(name: str) -> str:
    return resources.files("stagerunner.sql").joinpath(f"{name}.sql").read_text()


def _run(conn: psycopg.Connection[Any], name: str, params: dict[str, Any] | None = None
         ) -> list[dict[str, Any]]:
    started = time.perf_counter()
    with conn.cursor(row_factory=dict_row) as cur:
        cur.execute(_sql(name), params)
        rows = cur.fetchall() if cur.description else []
    if log.isEnabledFor(logging.DEBUG):
        log.debug("QUERY OK", extra={"event": "sql", "query": name, "rows": len(rows),
                                     "db_ms": round((time.perf_counter() - started) * 1000, 2),
                                     "params": _brief(params)})
    return rows


def query(conn: psycopg.Connection[Any], name: str, params: dict[str, Any] | None = None
          ) -> list[dict[str, Any]]:
    """Run sql/<name>.sql and return its rows as dicts (for read-only callers outside
    this module, such as the dashboard, that keep their statements in sql/ too)."""
    return _run(conn, name, params)


def _brief(params: dict[str, Any] | None) -> str:
    text = repr(params or {})
    return text if len(text) <= 400 else text[:397] + "..."


def connect(dsn: str, *, pooled: bool = False, **kwargs: Any) -> psycopg.Connection[Any]:
    """An autocommit connection; every store function is then its own transaction.

    `pooled`: the DSN is a transaction-pooling PgBouncer, where consecutive transactions
    may run on different server connections, so nothing may live in the session. psycopg
    prepares a statement on the server after its 5th run; the next run could then land on
    a server connection that never saw it, so preparing is off (each statement is then
    planned anew: see the README for what that costs)."""
    if pooled:
        kwargs["prepare_threshold"] = None
    return psycopg.connect(dsn, autocommit=True, application_name="stagerunner", **kwargs)


# A peer that stops answering must surface as an error within seconds, not hang the
# producer: TCP keepalives, a TCP user timeout, and a statement timeout.
GUARDS = {"connect_timeout": 2, "keepalives": 1, "keepalives_idle": 5, "keepalives_interval": 2,
          "keepalives_count": 3, "tcp_user_timeout": 10_000}
# The server-side timeouts travel as a startup parameter, which PgBouncer refuses. Through
# transaction pooling they cannot be set per session either (a SET would stay behind on a
# server connection that other clients then get), nor per statement (SET LOCAL needs a
# transaction block: BEGIN, SET, COMMIT, three more round trips per statement): there
# PgBouncer's query_timeout and idle_transaction_timeout, or the role's own settings,
# take their place (README).
SERVER_TIMEOUTS = {"options": "-c statement_timeout=30000 -c idle_in_transaction_session_timeout=60000"}


def connect_guarded(dsn: str, *, pooled: bool = False) -> psycopg.Connection[Any]:
    """A connection for long-lived stages (the producer, the metrics server)."""
    if pooled:
        return connect(dsn, pooled=True, **GUARDS)
    return connect(dsn, **GUARDS, **SERVER_TIMEOUTS)


def listen(conn: psycopg.Connection[Any]) -> None:
    """LISTEN on the producer's channels (on a connection kept for it)."""
    _run(conn, "listen")


# Enqueue -----------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class NewTask:
    name: str
    args: str  # JSON text, validated by client.to_json
    queue: str = "default"
    priority: int = 0
    max_attempts: int = 3
    timeout_s: float | None = None
    delay_s: float | None = None
    run_at: datetime | None = None
    unique_key: str | None = None


INSERT_ROUNDS = 3  # a key whose holder finishes between our insert and our lookup: retry


def insert_tasks(conn: psycopg.Connection[Any], tasks: Sequence[NewTask]) -> list[int]:
    """(new) -> waiting for all of them in one statement; ids in input order.

    A task whose unique_key is already held by a waiting or running task (or by an
    earlier task of the same call) yields that task's id instead of a new row.
    """
    ids: list[int | None] = [None] * len(tasks)
    todo = list(range(len(tasks)))
    for _ in range(INSERT_ROUNDS):
        if not todo:
            break
        todo = _insert_round(conn, tasks, todo, ids)
    if todo:
        raise RuntimeError(f"could not settle the uniqueness keys of {len(todo)} task(s)")
    return [i for i in ids if i is not None]


def _insert_round(conn: psycopg.Connection[Any], tasks: Sequence[NewTask], todo: list[int],
                  ids: list[int | None]) -> list[int]:
    """Insert tasks[todo]; fill ids; return the indexes still without an id."""
    batch = [tasks[i] for i in todo]
    rows = _run(conn, "insert_tasks", _columns(batch))
    plain = iter(sorted(r["id"] for r in rows if r["unique_key"] is None))
    made = {r["unique_key"]: r["id"] for r in rows if r["unique_key"] is not None}
    held = [t.unique_key for t in batch if t.unique_key is not None and t.unique_key not in made]
    if held:
        made.update((r["unique_key"], r["id"])
                    for r in _run(conn, "find_unique_tasks", {"keys": held}))
    left = []
    for i, task in zip(todo, batch):
        ids[i] = next(plain) if task.unique_key is None else made.get(task.unique_key)
        if ids[i] is None:
            left.append(i)
    return left


def _columns(tasks: Sequence[NewTask]) -> dict[str, list[Any]]:
    return {
        "names": [t.name for t in tasks], "args": [t.args for t in tasks],
        "queues": [t.queue for t in tasks], "priorities": [t.priority for t in tasks],
        "max_attempts": [t.max_attempts for t in tasks], "timeouts": [t.timeout_s for t in tasks],
        "delays": [t.delay_s for t in tasks], "run_ats": [t.run_at for t in tasks],
        "unique_keys": [t.unique_key for t in tasks],
    }


# The producer's transitions -----------------------------------------------------------

def claim_tasks(conn: psycopg.Connection[Any], *, owner: str, queue: str, limit: int
                ) -> tuple[list[Claim], float | None]:
    """waiting -> running: at most `limit` due tasks of `queue`, in dispatch order; and the
    seconds until the queue's next scheduled task is due (None: none is)."""
    rows = _run(conn, "claim_tasks", {"owner": owner, "queue": queue, "limit": limit})
    next_due = rows[0]["next_due_s"] if rows else None
    rows = [r for r in rows if r["id"] is not None]
    rows.sort(key=lambda r: (-r["priority"], r["run_at"], r["id"]))  # RETURNING has no order
    return [Claim(Task(r["id"], r["attempts"], r["name"], r["args"], r["timeout_s"], r["queue"]),
                  r["lost"], r["max_attempts"]) for r in rows], next_due


@dataclass(frozen=True, slots=True)
class Finish:
    """One row transition decided by completer.decide()."""

    task_id: int
    attempt: int
    status: str  # the row's new status
    reported: str  # what the run reported (kept in the errors history)
    result: str | None = None  # JSON text
    error: str | None = None
    delay_s: float = 0.0
    lost: int = 0
    runtime_ms: float = 0.0


def finish_tasks(conn: psycopg.Connection[Any], *, owner: str, finishes: Sequence[Finish]
                 ) -> dict[int, str]:
    """running -> outcome, guarded by status, owner and attempt; {id: status now} of the
    rows written."""
    if not finishes:
        return {}
    rows = _run(conn, "finish_tasks", {
        "owner": owner,
        "ids": [f.task_id for f in finishes], "attempts": [f.attempt for f in finishes],
        "statuses": [f.status for f in finishes], "reported": [f.reported for f in finishes],
        "results": [f.result for f in finishes], "errors": [f.error for f in finishes],
        "delays": [f.delay_s for f in finishes], "lost": [f.lost for f in finishes],
        "runtimes": [f.runtime_ms for f in finishes],
    })
    return {r["id"]: r["status"] for r in rows}


def release_tasks(conn: psycopg.Connection[Any], *, owner: str, tasks: Sequence[Task],
                  unheld: bool = False) -> set[int]:
    """running (never started) -> waiting, guarded by owner and attempt. With `unheld`,
    every running task of `owner` except `tasks` (claims whose rows never reached us)."""
    if not tasks and not unheld:
        return set()
    rows = _run(conn, "release_tasks", {"owner": owner, "ids": [t.id for t in tasks],
                                        "attempts": [t.attempt for t in tasks], "unheld": unheld})
    return {r["id"] for r in rows}


def beat_node(conn: psycopg.Connection[Any], *, owner: str, node: str, host: str, pid: int,
              queues: str) -> None:
    _run(conn, "beat_node", {"owner": owner, "node": node, "host": host, "pid": pid, "queues": queues})


def retire_nodes(conn: psycopg.Connection[Any], *, owners: Sequence[str]) -> None:
    if owners:
        _run(conn, "retire_nodes", {"owners": list(owners)})


@dataclass(frozen=True, slots=True)
class Orphan:
    task_id: int
    attempt: int
    lost: int
    max_attempts: int
    owner: str


ORPHANS_PER_CALL = 1000


def find_orphans(conn: psycopg.Connection[Any], *, expiry_s: float) -> list[Orphan]:
    """running tasks of owners whose heartbeat expired (or who never beat)."""
    rows = _run(conn, "find_orphans", {"expiry": expiry_s, "limit": ORPHANS_PER_CALL})
    return [Orphan(r["id"], r["attempts"], r["lost"], r["max_attempts"], r["claimed_by"])
            for r in rows]


def forget_nodes(conn: psycopg.Connection[Any], *, expiry_s: float) -> None:
    _run(conn, "forget_nodes", {"expiry": expiry_s})


def delete_node(conn: psycopg.Connection[Any], *, owner: str) -> None:
    _run(conn, "delete_node", {"owner": owner})


def find_cancel_requests(conn: psycopg.Connection[Any], *, owner: str) -> list[int]:
    """Running tasks of `owner` whose cancel was requested (for a node that polls)."""
    return [r["id"] for r in _run(conn, "find_cancel_requests", {"owner": owner})]


def paused_queues(conn: psycopg.Connection[Any], *, queues: Sequence[str]) -> set[str]:
    return {r["name"] for r in _run(conn, "paused_queues", {"queues": list(queues)})}


def enqueue_periodic(conn: psycopg.Connection[Any], *, name: str, tick: datetime, queue: str,
                     priority: int, max_attempts: int, timeout_s: float | None) -> int | None:
    """(new) -> waiting for one cron tick, unless another node already enqueued it."""
    rows = _run(conn, "enqueue_periodic", {"name": name, "tick": tick, "queue": queue,
                                           "priority": priority, "max_attempts": max_attempts,
                                           "timeout": timeout_s})
    return rows[0]["id"] if rows else None


# Inspection and repair ------------------------------------------------------------------

def list_tasks(conn: psycopg.Connection[Any], *, status: str | None = None, queue: str | None = None,
               name: str | None = None, older_s: float | None = None, newer_s: float | None = None,
               limit: int = 50) -> list[dict[str, Any]]:
    return _run(conn, "list_tasks", {"status": status, "queue": queue, "name": name,
                                     "older_s": older_s, "newer_s": newer_s, "limit": limit})


def get_task(conn: psycopg.Connection[Any], *, task_id: int) -> dict[str, Any] | None:
    rows = _run(conn, "get_task", {"id": task_id})
    return rows[0] if rows else None


def retry_tasks(conn: psycopg.Connection[Any], *, ids: Sequence[int] = (), failed: bool = False
                ) -> list[int]:
    """error | timeout | cancelled -> waiting (by id, or all failed ones)."""
    return sorted(r["id"] for r in _run(conn, "retry_tasks", {"ids": list(ids), "failed": failed}))


def purge_tasks(conn: psycopg.Connection[Any], *, older_s: float, batch: int = 1000,
                exclusive: bool = False) -> int:
    """Delete up to `batch` finished tasks older than `older_s`; returns how many."""
    return len(_run(conn, "purge_tasks", {"older_s": older_s, "batch": batch, "exclusive": exclusive}))


def pause_queue(conn: psycopg.Connection[Any], *, queue: str, paused: bool) -> None:
    _run(conn, "pause_queue", {"queue": queue, "paused": paused})


def list_queues(conn: psycopg.Connection[Any]) -> list[dict[str, Any]]:
    return _run(conn, "list_queues")


def count_finished_since(conn: psycopg.Connection[Any], *, seconds: float) -> int:
    return int(_run(conn, "count_finished_since", {"seconds": seconds})[0]["n"])


def count_live_tasks(conn: psycopg.Connection[Any]) -> list[dict[str, Any]]:
    """Waiting and running tasks per queue (and the oldest due waiting age)."""
    return _run(conn, "count_live_tasks")


def count_finished_tasks(conn: psycopg.Connection[Any], *, exact_below: int = 100_000
                         ) -> list[dict[str, Any]]:
    """Finished tasks per status: exact on a small table, estimated on a large one."""
    return _run(conn, "count_finished_tasks", {"exact_below": exact_below})


def cancel_tasks(conn: psycopg.Connection[Any], *, ids: Sequence[int]) -> list[tuple[int, str]]:
    """waiting -> cancelled; running -> cancel requested (its owner kills it). (id, status)."""
    return [(r["id"], r["status"]) for r in _run(conn, "cancel_tasks", {"ids": list(ids)})]


def live_nodes(conn: psycopg.Connection[Any], *, expiry_s: float) -> list[dict[str, Any]]:
    return _run(conn, "live_nodes", {"expiry": expiry_s})
