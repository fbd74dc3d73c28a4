"""Secrets and inheritance: a DSN password never reaches a log line or a command line, even
through connection errors; a job child holds no database socket and no STAGERUNNER_* variable."""

from __future__ import annotations

import secrets
import subprocess
import sys

import pytest
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from stagerunner_tools.dbs import dbname_of, terminate_node_sessions
from stagerunner_tools.invariants import insert_rows, rows, wait_terminal
from stagerunner_tools.pgserver import PASSWORD_ROLE
from stagerunner_tools.procfs import cmdline
from tests.helpers import ROOT, eventually, node_env

pytestmark = [pytest.mark.system, pytest.mark.timeout(120)]


@pytest.fixture
def db(private_db: str) -> str:
    """On the private server, where PASSWORD_ROLE must give its password (the shared server
    trusts every local connection, so a wrong password would not even fail there)."""
    return private_db


@pytest.fixture
def secret_dsn(db, conn):
    """A DSN of the test database for a role that logs in with a password."""
    password = f"pw-{secrets.token_hex(8)}"
    conn.execute(f"DROP ROLE IF EXISTS {PASSWORD_ROLE}")
    conn.execute(f"CREATE ROLE {PASSWORD_ROLE} LOGIN PASSWORD '{password}' SUPERUSER")
    info = conninfo_to_dict(db)
    info.update(user=PASSWORD_ROLE, password=password, host="127.0.0.1")
    try:
        yield make_conninfo(**info), password
    finally:
        conn.execute(f"DROP OWNED BY {PASSWORD_ROLE}")
        conn.execute(f"DROP ROLE {PASSWORD_ROLE}")


def test_a_dsn_password_never_appears_in_logs_even_through_connection_errors(
        conn, start_node, secret_dsn):
    dsn, password = secret_dsn
    url = f"postgresql://{conninfo_to_dict(dsn)['user']}:{password}@127.0.0.1:" \
          f"{conninfo_to_dict(dsn).get('port', 5432)}/{dbname_of(dsn)}"
    for i, (form, fmt) in enumerate([(dsn, "text"), (url, "json")]):
        node = start_node(dsn=form, log_level="debug", log_format=fmt, heartbeat_interval=0.3)
        ids = insert_rows(conn, "tests.tasks:add", [[i, 1] for i in range(5)])
        wait_terminal(conn, ids, timeout=30, node=node)
        # connection errors get logged with their messages: terminate the node's sessions
        terminate_node_sessions(conn, dbname_of(dsn))
        eventually(lambda: node.events("db.disconnected") and len(node.events("db.connected")) >= 2,
                   timeout=20)
        ids = insert_rows(conn, "tests.tasks:add", [[i, 2] for i in range(5)])
        wait_terminal(conn, ids, timeout=30, node=node)
        for pid in [node.proc.pid, *node.tree()]:
            assert password not in cmdline(pid), f"the password is on the command line of {pid}"
        assert node.stop() == 0
        log = node.log()
        assert "db_ms=" in log or '"db_ms"' in log, "debug logging was not on"
        assert password not in log, f"the password leaked into the {fmt} log"

    # a wrong password: the failure says so without echoing it
    wrong = f"wrong-{secrets.token_hex(6)}"
    for form in (dsn.replace(password, wrong), url.replace(password, wrong)):
        out = subprocess.run([sys.executable, "-m", "stagerunner", "run"], cwd=ROOT,
                             env=node_env(form, log_level="debug"), capture_output=True, text=True,
                             timeout=60)
        assert out.returncode == 1, out.stderr
        assert "cannot connect" in out.stderr and "password authentication failed" in out.stderr
        assert wrong not in out.stdout + out.stderr and password not in out.stdout + out.stderr


def test_a_job_child_inherits_no_database_socket_and_no_credential_variable(conn, start_node):
    """Not a STAGERUNNER_* variable, nor DATABASE_URL, nor libpq's PG* ones: a job gets
    none of the credentials the runner connects with."""
    node = start_node(consumers=2, child_reuse=1, extra_env={
        "DATABASE_URL": "postgresql://app:app-secret@db.internal/app",
        "PGPASSWORD": "pg-secret", "PGUSER": "someone", "PGPASSFILE": "/root/.pgpass"})
    halves = [["app-se", "cret"], ["pg-se", "cret"]]  # never whole in this process either
    ids = insert_rows(conn, "tests.tasks:inheritance", [[halves]] * 4)
    wait_terminal(conn, ids, timeout=30, node=node)
    for r in rows(conn, ids).values():
        assert r["status"] == "success", r["last_error"]
        seen = r["result"]
        assert seen["sockets"] == [], f"a job inherited sockets: {seen['fds']}"
        assert seen["environ"] == [], seen["environ"]
        # not even in memory: the consumers' fork server runs with their jobs' environment
        assert seen["in_memory"] == [], f"a job's memory holds {seen['in_memory']}"
        assert seen["proc_environ"] == [], ("STAGERUNNER_* variables are readable in the job's "
                                            f"/proc/self/environ: {seen['proc_environ']}")
        # stdio and its two pipes, nothing else
        assert len(seen["fds"]) <= 6, seen["fds"]
        assert all(t.startswith(("pipe:", "/")) for t in seen["fds"].values()), seen["fds"]


BAD_DSNS = [
    ("STAGERUNNER_DATABASE_URL", "postgresql://u:pa%ss wxyz@127.0.0.1:5432/db", ["pa%ss", "wxyz"]),
    ("DATABASE_URL", "postgresql://u:50%off@127.0.0.1:5432/db", ["50%off"]),
    ("STAGERUNNER_DATABASE_URL", "host=127.0.0.1 password='un closed", ["un closed"]),
]
COMMANDS = [["run"], ["migrate"], ["status"], ["list"], ["show", "1"], ["retry", "--failed"],
            ["cancel", "1"], ["purge", "--older-than", "1d"], ["pause", "q"],
            ["enqueue", "tests.tasks:ok"]]


@pytest.mark.parametrize("variable, dsn, secret", BAD_DSNS)
def test_a_malformed_dsn_stops_every_command_with_exit_2_and_the_password_masked(
        variable, dsn, secret):
    env = node_env("", task_modules="tests.tasks")
    env.pop("STAGERUNNER_DATABASE_URL")
    env[variable] = dsn
    for command in COMMANDS:
        out = subprocess.run([sys.executable, "-m", "stagerunner", *command], cwd=ROOT, env=env,
                             capture_output=True, text=True, timeout=60)
        said = out.stdout + out.stderr
        assert out.returncode == 2, (command, said)
        assert variable in said and "Traceback" not in said, (command, said)
        assert not any(s in said for s in secret), (command, said)
