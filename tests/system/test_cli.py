"""The CLI as an operator uses it."""

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from tests.helpers import ROOT, end_embedded_node, eventually, node_env, run_cli

pytestmark = [pytest.mark.system, pytest.mark.timeout(120)]


def test_help_lists_every_command():
    out = subprocess.run([sys.executable, "-m", "stagerunner", "--help"], capture_output=True,
                         text=True, cwd=ROOT, check=True).stdout
    for command in ("run", "migrate", "schema", "enqueue", "status", "demo"):
        assert command in out
    script = shutil.which("stagerunner", path=str(Path(sys.executable).parent))
    assert script, "console script not installed"
    assert subprocess.run([script, "--help"], capture_output=True, text=True).stdout == out


def test_schema_prints_the_schema_file(empty_db):
    out = run_cli("schema", dsn=empty_db)
    assert out.returncode == 0 and out.stdout == (ROOT / "schema.sql").read_text()


def test_run_refuses_a_database_without_the_schema_and_names_the_fix(empty_db):
    out = run_cli("run", dsn=empty_db)
    assert out.returncode == 3
    assert "python -m stagerunner migrate" in out.stderr


# Runs a node as the child of a child subreaper: whatever the node leaves behind when it
# exits is reparented here, and listed once the stragglers killed with it are reaped.
_LEFT_BEHIND = """
import os, subprocess, sys, time
from stagerunner import procs
procs.become_subreaper()
rc = subprocess.call([sys.executable, "-m", "stagerunner"])
deadline = time.monotonic() + 1.0
while time.monotonic() < deadline:
    try:
        os.waitpid(-1, os.WNOHANG)
    except ChildProcessError:
        pass
    time.sleep(0.05)
print(rc, procs.children_of(os.getpid()))
"""


def test_a_start_that_fails_after_launching_the_consumers_leaves_none_behind(empty_db):
    """The consumers start before the schema check (their start overlaps the node's own);
    when the check fails, nothing they started outlives the node, and they say nothing."""
    env = node_env(empty_db, consumers="3")
    out = subprocess.run([sys.executable, "-c", _LEFT_BEHIND], cwd=ROOT, env=env,
                         capture_output=True, text=True, timeout=60)
    assert out.stdout.split(maxsplit=1) == ["3", "[]\n"], (out.stdout, out.stderr)
    assert "python -m stagerunner migrate" in out.stderr
    assert "Traceback" not in out.stderr and "consumer" not in out.stderr


def test_a_metrics_port_in_use_stops_the_node_at_boot_and_leaves_no_stage(db):
    """Once, the supervisor logged the bind error and hung, its stages running on without
    it and deaf to SIGINT and SIGTERM."""
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        env = node_env(db, consumers="2", metrics_port=str(port))
        out = subprocess.run([sys.executable, "-c", _LEFT_BEHIND], cwd=ROOT, env=env,
                             capture_output=True, text=True, timeout=60)
    assert out.stdout.split(maxsplit=1) == ["2", "[]\n"], (out.stdout, out.stderr)
    assert f"STAGERUNNER_METRICS_PORT={port}: cannot listen there" in out.stderr
    assert "Traceback" not in out.stderr


def test_a_dsn_libpq_cannot_parse_fails_run_at_boot_and_leaves_no_consumer():
    """A DSN libpq cannot parse stops a node at boot, naming the variable with the
    password masked, and nothing it started outlives it."""
    env = node_env("postgresql://u:hunter2@127.0.0.1/db?nosuchoption=1", consumers="3")
    out = subprocess.run([sys.executable, "-c", _LEFT_BEHIND], cwd=ROOT, env=env,
                         capture_output=True, text=True, timeout=60)
    assert out.stdout.split(maxsplit=1) == ["2", "[]\n"], (out.stdout, out.stderr)
    assert "STAGERUNNER_DATABASE_URL='postgresql://u:***@127.0.0.1/db?nosuchoption=1'" in out.stderr
    assert "hunter2" not in out.stderr and "Traceback" not in out.stderr


@pytest.mark.parametrize("dsn, shown", [
    ("postgresql://u:hunter2@127.0.0.1?nosuchoption=1", "'postgresql://u:***@127.0.0.1?nosuchoption=1'"),
    ("host=h password='hun ter2", "'host=h password=***'"),
])
def test_a_bad_dsn_is_reported_whole(dsn, shown):
    """The message is masked once: a second pass over it would take its hint ("'@' as %40")
    for a URL's credentials and cut the line short."""
    out = run_cli("run", dsn=dsn, timeout=60)
    assert out.returncode == 2
    assert f"STAGERUNNER_DATABASE_URL={shown} is not a valid PostgreSQL URL" in out.stderr, out.stderr
    assert "hun" + "ter2" not in out.stderr


def test_migrate_then_enqueue_prints_an_id_and_status_counts_it(empty_db):
    assert run_cli("migrate", dsn=empty_db).returncode == 0
    assert run_cli("migrate", dsn=empty_db).returncode == 0  # idempotent
    out = run_cli("enqueue", "tests.tasks:add", "1", "2", dsn=empty_db)
    assert out.returncode == 0 and out.stdout.strip().isdigit()
    status = run_cli("status", "--json", dsn=empty_db)
    assert json.loads(status.stdout)["statuses"] == {"waiting": 1}


def test_enqueue_refuses_arguments_that_are_not_json(db):
    out = run_cli("enqueue", "tests.tasks:echo", "hello", dsn=db)
    assert out.returncode == 2 and "is not JSON" in out.stderr and "'\"hello\"'" in out.stderr


def test_enqueue_options_reach_the_row(db, get_task):
    out = run_cli("enqueue", "tests.tasks:echo", "--kwargs", '{"a": 1}', "--queue", "mail",
                  "--priority", "4", "--max-attempts", "7", "--in", "60", dsn=db)
    row = get_task(int(out.stdout))
    assert (row["args"], row["queue"], row["priority"], row["max_attempts"]) == ({"a": 1}, "mail", 4, 7)


@pytest.mark.parametrize("env, fragment", [
    ({"STAGERUNNER_CONSUMERS": "lots"}, "STAGERUNNER_CONSUMERS='lots'"),
    ({"STAGERUNNER_JOB_TIMEOT": "3"}, "did you mean STAGERUNNER_JOB_TIMEOUT"),
])
def test_a_bad_setting_fails_at_boot_naming_the_variable(db, env, fragment):
    out = subprocess.run([sys.executable, "-m", "stagerunner", "run"], cwd=ROOT, capture_output=True,
                         text=True, env={**os.environ, "STAGERUNNER_DATABASE_URL": db, **env}, timeout=30)
    assert out.returncode == 2 and fragment in out.stderr


def test_an_unimportable_task_module_fails_at_boot(db):
    out = run_cli("run", dsn=db, task_modules="tests.no_such_module")
    assert out.returncode == 2 and "tests.no_such_module" in out.stderr


def test_a_cron_expression_that_can_never_fire_is_refused_at_boot(db):
    out = run_cli("run", dsn=db, task_modules="tests.tasks,tests.periodic_never", timeout=60)
    assert out.returncode == 2
    assert "0 0 30 2 *" in out.stderr and "can never fire" in out.stderr


def test_debug_logs_show_sql_with_timings_and_never_the_password(db, start_node, conn, pg_admin_dsn):
    conn.execute("CREATE ROLE sr_secret_user LOGIN PASSWORD 'hunter2-secret' SUPERUSER")
    try:
        from psycopg.conninfo import conninfo_to_dict, make_conninfo

        info = conninfo_to_dict(db)
        info.update(user="sr_secret_user", password="hunter2-secret")
        secret_dsn = make_conninfo(**info)
        node = start_node(dsn=secret_dsn, log_level="debug")
        run_cli("enqueue", "tests.tasks:ok", dsn=secret_dsn)
        eventually(lambda: "task finished" in node.log(), timeout=10)
        node.stop()
        log = node.log()
        assert "QUERY OK" in log and "query=claim_tasks" in log and "db_ms=" in log
        assert "hunter2-secret" not in log
        # a connection that fails (this server trusts any password: a missing database
        # makes it fail) is reported without the password it was given
        bad = run_cli("status", dsn=make_conninfo(**{**info, "password": "wrong-pass",
                                                      "dbname": "sr_no_such_database"}))
        assert bad.returncode != 0 and "sr_no_such_database" in bad.stderr, bad.stderr
        assert "wrong-pass" not in bad.stderr + bad.stdout
    finally:
        conn.execute("DROP OWNED BY sr_secret_user")
        conn.execute("DROP ROLE sr_secret_user")


def test_json_log_lines_carry_stable_events(db, start_node):
    node = start_node(log_format="json")
    run_cli("enqueue", "tests.tasks:ok", dsn=db)
    eventually(lambda: "task.finished" in node.log(), timeout=10)
    events = [json.loads(line) for line in node.log().splitlines() if line.startswith("{")]
    assert {"node.started", "task.finished"} <= {e.get("event") for e in events}
    assert all({"ts", "level", "pid", "role"} <= set(e) for e in events)


def test_demo_counter_prints_the_tutorials_lines_from_several_consumers():
    out = subprocess.run([sys.executable, "-m", "stagerunner", "demo", "counter", "--consumers", "3",
                          "--events", "30"], capture_output=True, text=True, cwd=ROOT, timeout=60)
    lines = out.stdout.splitlines()
    events = sorted(int(line.split(", ")[1]) for line in lines)
    assert events == list(range(30))
    assert len({line.split(",")[0] for line in lines}) == 3
    assert all(line.endswith(":state_doesnt_matter)") for line in lines)


def test_demo_counter_broadcast_gives_every_consumer_every_event():
    out = subprocess.run([sys.executable, "-m", "stagerunner", "demo", "counter", "--consumers", "2",
                          "--events", "10", "--broadcast", "--start", "100"], capture_output=True,
                         text=True, cwd=ROOT, timeout=60)
    by_pid: dict[str, list[int]] = {}
    for pid, event in re.findall(r"^\((\d+), (\d+), :state_doesnt_matter\)$", out.stdout, re.M):
        by_pid.setdefault(pid, []).append(int(event))
    assert len(by_pid) == 2
    assert all(sorted(v) == list(range(100, 110)) for v in by_pid.values())


@pytest.mark.slow
def test_readme_quickstart_with_the_embedded_server():
    """No database configured: run starts an embedded PostgreSQL; enqueue and status find it."""
    data = Path(tempfile.mkdtemp(prefix="stagerunner-quickstart-"))
    os.chmod(data, 0o755)
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("STAGERUNNER_", "PG")) and k != "DATABASE_URL"}
    env.update(STAGERUNNER_DATA_DIR=str(data / "pgdata"), STAGERUNNER_TASK_MODULES="tests.tasks",
               STAGERUNNER_CONSUMERS="2", PYTHONPATH=str(ROOT))
    log = open(data / "node.log", "wb")
    node = subprocess.Popen([sys.executable, "-m", "stagerunner"], cwd=ROOT, env=env, stdout=log,
                            stderr=subprocess.STDOUT, start_new_session=True)
    try:
        eventually(lambda: b"node started" in (data / "node.log").read_bytes(), timeout=60)
        text = (data / "node.log").read_text()
        assert "using the embedded PostgreSQL" in text
        # the log says how to connect, and it works with the password from the named file
        import psycopg

        dsn = re.search(r"connect=\"psql '([^']+)'\"", text).group(1)
        secret = Path(re.search(r"password_file=(\S+)", text).group(1)).read_text().strip()
        assert secret and secret not in text
        with psycopg.connect(dsn, password=secret, connect_timeout=10) as conn:
            assert conn.execute("SELECT 1").fetchone() == (1,)
        cli = [sys.executable, "-m", "stagerunner"]
        out = subprocess.run([*cli, "enqueue", "tests.tasks:add", "2", "3"], cwd=ROOT, env=env,
                             capture_output=True, text=True, timeout=60)
        assert out.stdout.strip().isdigit(), out.stderr

        def succeeded():
            status = subprocess.run([*cli, "status", "--json"], cwd=ROOT, env=env,
                                    capture_output=True, text=True, timeout=60)
            return json.loads(status.stdout)["statuses"].get("success") == 1

        eventually(succeeded, timeout=30, interval=0.5)
        node.send_signal(signal.SIGTERM)
        assert node.wait(timeout=30) == 0
    finally:
        log.close()
        end_embedded_node(node, data)
