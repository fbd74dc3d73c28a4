"""Every SQL call stagerunner makes: one small function per file in ``sql/``, named
after it. Callers never see SQL. At log level debug each query is logged with its
timing, like Ecto's ``QUERY OK db=0.4ms`` lines in the tutorial.
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import sys
import time
from collections.abc import Generator, Sequence
from dataclasses import dataclass
from datetime import datetime
from importlib import resources
from typing import Any

import psycopg
from psycopg.rows import dict_row
from psycopg.types.json import set_json_loads

from stagerunner.demand import Claim
from stagerunner.protocol import Task

log = logging.getLogger(__name__)


@functools.cache
def sql_text(name: str) -> str:
    """The statement in sql/<name>.sql (astore, the async twin, runs the same files)."""
    return resources.files("stagerunner.sql").joinpath(f"{name}.sql").read_text()


def _run(conn: psycopg.Connection[Any], name: str, params: dict[str, Any] | None = None
         ) -> list[dict[str, Any]]:
    started = time.perf_counter()
    with conn.cursor(row_factory=dict_row) as cur:
        cur.execute(sql_text(name), params)
        rows = cur.fetchall() if cur.description else []
    if log.isEnabledFor(logging.DEBUG):
        log.debug("QUERY OK", extra={"event": "sql", "query": name, "rows": len(rows),
                                     "db_ms": round((time.perf_counter() - started) * 1000, 2),
                                     "params": _brief(params)})
    return rows


def query(conn: psycopg.Connection[Any], name: str, params: dict[str, Any] | None = None
          ) -> list[dict[str, Any]]:
    """Run sql/<name>.sql and return its rows as dicts (for callers outside this module
    that keep their statements in sql/ too: the dashboard's reads, the task catalog)."""
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
    conn = psycopg.connect(dsn, autocommit=True, application_name="stagerunner",
                           **connect_kwargs(pooled, kwargs))
    return safe_json(conn)


def safe_json(conn: Any) -> Any:
    """`conn`, reading JSON from the database (untrusted: any role that enqueues writes
    arguments) without an integer or a nesting CPython refuses to load breaking the page,
    the command or the result that reads it."""
    set_json_loads(_json_loads, conn)
    return conn


def _json_loads(data: str | bytes) -> Any:
    try:
        return json.loads(data)  # the C parser: every value but the odd hostile one
    except ValueError:  # an integer longer than CPython converts: again, keeping it text
        return json.loads(data, parse_int=_json_int)
    except RecursionError:  # nested deeper than CPython parses: shown as the text it is
        return data if isinstance(data, str) else data.decode()


def _json_int(digits: str) -> int | str:
    """A JSON integer longer than CPython converts (4300 digits by default) stays text: a
    row with one in its arguments (any role that enqueues can write it) must not break
    every page and command that reads the row."""
    limit = sys.get_int_max_str_digits()
    return digits if limit and len(digits.lstrip("-")) > limit else int(digits)


def connect_kwargs(pooled: bool, kwargs: dict[str, Any]) -> dict[str, Any]:
    """`kwargs` for a connection, with prepared statements off through a pooler."""
    return {**kwargs, "prepare_threshold": None} if pooled else kwargs


# A peer that stops answering must surface as an error within seconds, not hang the
# producer: TCP keepalives, a TCP user timeout, and a statement timeout.
GUARDS: dict[str, Any] = {"connect_timeout": 2, "keepalives": 1, "keepalives_idle": 5,
                          "keepalives_interval": 2, "keepalives_count": 3,
                          "tcp_user_timeout": 10_000}
# The server-side timeouts travel as a startup parameter, which PgBouncer refuses. Through
# transaction pooling they cannot be set per session either (a SET would stay behind on a
# server connection that other clients then get), nor per statement (SET LOCAL needs a
# transaction block: BEGIN, SET, COMMIT, three more round trips per statement): there
# PgBouncer's query_timeout and idle_transaction_timeout, or the role's own settings,
# take their place (README).
SERVER_TIMEOUTS: dict[str, Any] = {
    "options": "-c statement_timeout=30000 -c idle_in_transaction_session_timeout=60000"}


def close_quietly(conn: psycopg.Connection[Any] | None) -> None:
    """Close a connection that may already be broken; a failure to close changes nothing."""
    if conn is not None:
        try:
            conn.close()
        except Exception:
            pass


def connect_guarded(dsn: str, *, pooled: bool = False) -> psycopg.Connection[Any]:
    """A connection for long-lived stages (the producer, the metrics server)."""
    if pooled:
        return connect(dsn, pooled=True, **GUARDS)
    return connect(dsn, **GUARDS, **SERVER_TIMEOUTS)


def listen(conn: psycopg.Connection[Any]) -> None:
    """LISTEN on the producer's channels (on a connection kept for it)."""
    _run(conn, "listen")


# Statement sequences ------------------------------------------------------------

# Statements as a generator (yields (sql file, params), is sent the rows) for drive / astore.
# Two step names are not statements to run: ATOMIC opens a transaction (a savepoint in
# the caller's) held to the end, and a "copy_" statement is a COPY of params["rows"].
Steps = Generator[tuple[str, dict[str, Any]], list[dict[str, Any]], Any]
ATOMIC = "atomic"


def drive(conn: psycopg.Connection[Any], steps: Steps) -> Any:
    """Run a statement sequence on a sync connection."""
    with contextlib.ExitStack() as held:
        try:
            step = next(steps)
            while True:
                step = steps.send(_step(conn, held, *step))
        except StopIteration as done:
            return done.value


def _step(conn: psycopg.Connection[Any], held: contextlib.ExitStack, name: str,
          params: dict[str, Any]) -> list[dict[str, Any]]:
    if name == ATOMIC:
        held.enter_context(conn.transaction())
        return []
    if name.startswith("copy_"):
        with conn.cursor() as cur, cur.copy(sql_text(name)) as copy:
            for row in params["rows"]:
                copy.write_row(row)
        return []
    return _run(conn, name, params)


# The producer's transitions -----------------------------------------------------------

def claim_tasks(conn: psycopg.Connection[Any], *, owner: str, queue: str, limit: int
                ) -> tuple[list[Claim], float | None]:
    """waiting -> running: at most `limit` due tasks of `queue`, in dispatch order; and the
    seconds until the queue's next scheduled task is due (None: none is)."""
    rows = _run(conn, "claim_tasks", {"owner": owner, "queue": queue, "limit": limit})
    next_due = rows[0]["next_due_s"] if rows else None
    rows = [r for r in rows if r["id"] is not None]
    rows.sort(key=lambda r: (-r["priority"], r["run_at"], r["id"]))  # RETURNING has no order
    return [Claim(Task(r["id"], r["attempts"], r["name"], r["args"], r["timeout_s"], r["queue"],
                       r["max_attempts"], r["enqueued_at"]),
                  r["lost"], r["max_attempts"], r["kills"]) for r in rows], next_due


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
    kills: int = 0  # 1 when its consumer died under this run (completer.decide)
    consumer: int | None = None  # the consumer slot that ran it (None: keep the row's)
    deadline_s: float | None = None  # the deadline the run was given (None: keep the row's)
    refund: int = 0  # attempts given back: a snoozed run spent none


BUSY = "busy"  # finish_tasks: a row another transaction holds locked, not written yet


def finish_tasks(conn: psycopg.Connection[Any], *, owner: str, finishes: Sequence[Finish]
                 ) -> dict[int, str]:
    """running -> outcome, guarded by status, owner and attempt; {id: status now} of the
    rows written, and {id: BUSY} of those another transaction holds locked (skipped)."""
    if not finishes:
        return {}
    rows = _run(conn, "finish_tasks", {
        "owner": owner,
        "ids": [f.task_id for f in finishes], "attempts": [f.attempt for f in finishes],
        "statuses": [f.status for f in finishes], "reported": [f.reported for f in finishes],
        "results": [f.result for f in finishes], "errors": [storable(f.error) for f in finishes],
        "delays": [f.delay_s for f in finishes], "lost": [f.lost for f in finishes],
        "kills": [f.kills for f in finishes], "runtimes": [f.runtime_ms for f in finishes],
        "consumers": [f.consumer for f in finishes], "deadlines": [f.deadline_s for f in finishes],
        "refunds": [f.refund for f in finishes],
    })
    return {r["id"]: r["status"] or BUSY for r in rows}


def storable(text: str | None) -> str | None:
    """Text as PostgreSQL can store it. A job's error text may hold a lone surrogate (a file
    name ``os.fsdecode`` gave back, say), which UTF-8 cannot encode, or a NUL, which text
    cannot hold: both are written escaped instead of failing the whole batch's write."""
    if text is None or (text.isascii() and "\x00" not in text):
        return text
    return text.encode("utf-8", "backslashreplace").decode("utf-8").replace("\x00", "\\x00")


def release_tasks(conn: psycopg.Connection[Any], *, owner: str, tasks: Sequence[Task],
                  unheld: bool = False) -> tuple[set[int], list[Task]]:
    """running (never started) -> waiting, guarded by owner and attempt. With `unheld`,
    every running task of `owner` except `tasks` (claims whose rows never reached us).
    (ids released, tasks skipped because another transaction holds their rows locked:
    to be released again later, listed)."""
    if not tasks and not unheld:
        return set(), []
    rows = _run(conn, "release_tasks", {"owner": owner, "ids": [t.id for t in tasks],
                                        "attempts": [t.attempt for t in tasks], "unheld": unheld})
    busy = [Task(r["id"], r["busy_attempt"], "", "") for r in rows if r["busy_attempt"] is not None]
    return {r["id"] for r in rows if r["busy_attempt"] is None}, busy


def register_node(conn: psycopg.Connection[Any], *, owner: str, node: str, host: str, pid: int,
                  queues: str, lease_s: float, consumers: int = 0,
                  info: dict[str, Any] | None = None) -> float:
    """A fresh lease for `owner`; the seconds it has left (from the database's now())."""
    rows = _run(conn, "register_node", {"owner": owner, "node": node, "host": host, "pid": pid,
                                        "queues": queues, "lease_s": lease_s,
                                        "consumers": consumers, "info": json.dumps(info or {})})
    return float(rows[0]["lease_left_s"])


def beat_node(conn: psycopg.Connection[Any], *, owner: str, consumers: int = 0,
              info: dict[str, Any] | None = None) -> float | None:
    """Extend `owner`'s lease while it has not run out; the seconds it has left, or None
    when it had run out (or the row is gone): then the owner must stop its jobs."""
    rows = _run(conn, "beat_node", {"owner": owner, "consumers": consumers,
                                    "info": json.dumps(info or {})})
    return float(rows[0]["lease_left_s"]) if rows else None


def retire_nodes(conn: psycopg.Connection[Any], *, owners: Sequence[str]) -> None:
    if owners:
        _run(conn, "retire_nodes", {"owners": list(owners)})


@dataclass(frozen=True, slots=True)
class Orphan:
    task_id: int
    attempt: int
    lost: int
    kills: int
    max_attempts: int
    owner: str


ORPHANS_PER_CALL = 1000


def find_orphans(conn: psycopg.Connection[Any]) -> list[Orphan]:
    """running tasks of owners whose lease ran out (or who never registered)."""
    rows = _run(conn, "find_orphans", {"limit": ORPHANS_PER_CALL})
    return [Orphan(r["id"], r["attempts"], r["lost"], r["kills"], r["max_attempts"],
                   r["claimed_by"]) for r in rows]


def forget_nodes(conn: psycopg.Connection[Any]) -> None:
    _run(conn, "forget_nodes")


def delete_node(conn: psycopg.Connection[Any], *, owner: str) -> None:
    _run(conn, "delete_node", {"owner": owner})


def database_now(conn: psycopg.Connection[Any]) -> datetime:
    now: datetime = _run(conn, "database_now")[0]["now"]
    return now


def paused_queues(conn: psycopg.Connection[Any], *, queues: Sequence[str]) -> set[str]:
    return {r["name"] for r in _run(conn, "paused_queues", {"queues": list(queues)})}


def enqueue_periodic(conn: psycopg.Connection[Any], *, name: str, tick: datetime, queue: str,
                     priority: int, max_attempts: int, timeout_s: float | None) -> int | None:
    """(new) -> waiting for one cron tick, unless another node already enqueued it."""
    rows = _run(conn, "enqueue_periodic", {"name": name, "tick": tick, "queue": queue,
                                           "priority": priority, "max_attempts": max_attempts,
                                           "timeout": timeout_s})
    return rows[0]["id"] if rows else None


def find_cancelled(conn: psycopg.Connection[Any], *, owner: str, ids: Sequence[int]) -> list[int]:
    """Which of `ids` (running, held by `owner`) have a cancel requested."""
    if not ids:
        return []
    return [r["id"] for r in _run(conn, "find_cancelled", {"owner": owner, "ids": list(ids)})]
