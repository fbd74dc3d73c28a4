"""No silent surprises at the application's edge: no embedded server started behind the
user's back, the task catalog for enqueue by name, unknown names refused, pooled
connections, a task timeout above the cap refused at boot, `list` showing the exception,
and failed tasks kept longer than successful ones."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

import stagerunner
from stagerunner import opstore
from stagerunner_tools.nodes import ROOT, SCRUBBED, node_env
from tests.helpers import end_embedded_node, eventually, run_cli

pytestmark = pytest.mark.timeout(120)


def _python(code: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=60)


def _no_database_env(data_dir: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("STAGERUNNER_") and k not in SCRUBBED}
    env.update(STAGERUNNER_DATA_DIR=str(data_dir), PYTHONPATH=f"{ROOT}:{ROOT / 'src'}")
    return env


def test_an_application_without_a_database_fails_naming_the_setting(tmp_path):
    env = _no_database_env(tmp_path / "pgdata")
    out = _python("import stagerunner; stagerunner.enqueue('tests.tasks:ok', [])", env)
    assert out.returncode == 1
    assert "ConfigError" in out.stderr and "STAGERUNNER_DATABASE_URL" in out.stderr
    assert not (tmp_path / "pgdata").exists()  # no embedded server was started


@pytest.mark.system
def test_an_application_uses_the_embedded_server_a_running_node_owns():
    data = Path(tempfile.mkdtemp(prefix="stagerunner-apps-"))
    os.chmod(data, 0o755)
    env = _no_database_env(data / "pgdata")
    env.update(STAGERUNNER_TASK_MODULES="tests.tasks", STAGERUNNER_CONSUMERS="1")
    with open(data / "node.log", "wb") as log:
        node = subprocess.Popen([sys.executable, "-m", "stagerunner"], cwd=ROOT, env=env,
                                stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        eventually(lambda: b"node started" in (data / "node.log").read_bytes(), timeout=60)
        app = {k: v for k, v in env.items() if k != "STAGERUNNER_TASK_MODULES"}
        out = _python("import stagerunner; t = stagerunner.enqueue('tests.tasks:add', [2, 3]); "
                      "print(stagerunner.result(t, timeout=30))", app)
        assert out.returncode == 0 and out.stdout.strip() == "5", out.stderr
        node.send_signal(signal.SIGTERM)
        assert node.wait(timeout=30) == 0
    finally:
        end_embedded_node(node, data)


@pytest.mark.system
def test_enqueue_by_name_gets_the_tasks_own_options_from_the_catalog(db, start_node, get_task):
    start_node(task_modules="tests.apps.app_tasks")
    code = """
import sys, stagerunner
from stagerunner.errors import UnknownTask
a = stagerunner.enqueue("tests.apps.app_tasks:whoami", [])
b = stagerunner.enqueue("tests.apps.app_tasks:async_forever", [], priority=7)
try:
    stagerunner.enqueue("tests.apps.app_tasks:whoamii", [])
except UnknownTask as exc:
    print("refused:", exc)
assert "tests.apps" not in " ".join(sys.modules)  # never imported the task module
print(a, b)
"""
    out = _python(code, node_env(db, task_modules=""))
    assert out.returncode == 0, out.stderr
    refused, ids = out.stdout.strip().splitlines()
    assert "did you mean 'tests.apps.app_tasks:whoami'" in refused
    a, b = map(int, ids.split())
    assert (get_task(a)["max_attempts"], get_task(a)["timeout_s"]) == (4, None)
    assert (get_task(b)["max_attempts"], get_task(b)["timeout_s"], get_task(b)["priority"]) == (
        1, 0.5, 7)


@pytest.mark.db
def test_enqueue_without_conn_reuses_pooled_connections(db, conn, monkeypatch):
    from stagerunner import catalog, connections

    monkeypatch.setenv("STAGERUNNER_DATABASE_URL", db)
    connections.close_pools()
    catalog.forget()
    try:
        ids = [stagerunner.enqueue("tests.tasks:add", [i, i]) for i in range(30)]
        backends = conn.execute("SELECT count(*) FROM pg_stat_activity WHERE application_name = "
                                "'stagerunner-app' AND datname = current_database()").fetchone()[0]
    finally:
        connections.close_pools()
    assert len(set(ids)) == 30 and 1 <= backends <= connections.POOL_MAX


@pytest.mark.system
def test_a_task_timeout_above_the_cap_is_refused_at_boot_naming_both(db):
    out = subprocess.run([sys.executable, "-m", "stagerunner", "run"], cwd=ROOT,
                         env=node_env(db, task_modules="tests.apps.slow_tasks"),
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 2
    assert "timeout=120 s" in out.stderr and "STAGERUNNER_MAX_JOB_TIMEOUT=30 s" in out.stderr


@pytest.mark.system
def test_list_shows_the_exception_line_not_the_traceback_header(db, insert_task):
    insert_task("tests.tasks:boom", status="error", last_error=(
        'Traceback (most recent call last):\n  File "x.py", line 1, in boom\n'
        "ValueError: the real reason\n"))
    out = run_cli("list", dsn=db)
    assert "ValueError: the real reason" in out.stdout and "Traceback" not in out.stdout


@pytest.mark.db
def test_failed_tasks_are_kept_longer_than_successful_ones(conn, insert_task):
    from datetime import datetime, timedelta, timezone

    ago = lambda **delta: datetime.now(timezone.utc) - timedelta(**delta)  # noqa: E731
    old = {s: insert_task(status=s, finished_at=ago(hours=2))["id"]
           for s in ("success", "error", "timeout", "cancelled")}
    older = insert_task(status="error", finished_at=ago(days=3))["id"]
    deleted = opstore.purge_tasks(conn, older_s=3600, failed_older_s=86400)
    left = {r[0] for r in conn.execute("SELECT id FROM stagerunner.tasks")}
    assert deleted == 3 and left == {old["error"], old["timeout"]}
    assert older not in left
    assert opstore.purge_tasks(conn, older_s=60, failed_older_s=None) == 0  # kept forever


@pytest.mark.system
def test_the_cli_takes_positional_values_and_keywords_together(db, get_task):
    out = run_cli("enqueue", "tests.tasks:echo", "1", "--kwargs", '{"k": 2}', dsn=db)
    assert out.returncode == 0, out.stderr
    assert get_task(int(out.stdout))["args"] == {"*args": [1], "k": 2}
