"""Operating it: queues, priorities, pause, scheduling, cron, cancel, retention, metrics,
process titles, least privilege."""

import json
import socket
import time
import urllib.request

import pytest
from prometheus_client.parser import text_string_to_metric_families
from psycopg.conninfo import conninfo_to_dict, make_conninfo

import stagerunner
from stagerunner_tools.procfs import alive as pid_alive
from stagerunner_tools.procfs import descendants
from tests.helpers import eventually, run_cli

pytestmark = [pytest.mark.system, pytest.mark.timeout(90)]


def add(conn, name, args, **options):
    return stagerunner.enqueue(name, args, conn=conn, **options)


def status_of(conn, task_id):
    return conn.execute("SELECT status::text FROM stagerunner.tasks WHERE id = %s", [task_id]).fetchone()[0]


def test_a_slow_queue_cannot_starve_another(conn, start_node):
    slow = [add(conn, "tests.tasks:sleep_for", [0.8], queue="default") for _ in range(6)]
    start_node(queues="default=1,mail=1")
    mail = add(conn, "tests.tasks:ok", [], queue="mail")
    eventually(lambda: status_of(conn, mail) == "success", timeout=5)
    unfinished = [status_of(conn, t) in ("waiting", "running") for t in slow]
    assert sum(unfinished) >= 3  # mail did not wait for the slow queue to drain


def test_higher_priority_runs_first_then_oldest_first(conn, start_node, tmp_path):
    order = tmp_path / "order"
    for key, priority in [("low-1", 0), ("high-1", 5), ("low-2", 0), ("high-2", 5), ("mid", 2)]:
        add(conn, "tests.tasks:note", [str(order), key], priority=priority)
    start_node(consumers=1)
    eventually(lambda: order.exists() and len(order.read_text().split()) == 5, timeout=10)
    assert order.read_text().split() == ["high-1", "high-2", "mid", "low-1", "low-2"]


def test_a_paused_queue_is_not_claimed_by_any_node_until_resumed(db, conn, start_node):
    assert run_cli("pause", "mail", dsn=db).returncode == 0
    start_node(queues="default,mail=1")
    start_node(queues="mail=1")
    task = add(conn, "tests.tasks:ok", [], queue="mail")
    other = add(conn, "tests.tasks:ok", [])
    eventually(lambda: status_of(conn, other) == "success", timeout=5)
    time.sleep(1.0)
    assert status_of(conn, task) == "waiting"
    assert "paused queues: mail" in run_cli("status", dsn=db).stdout
    assert run_cli("resume", "mail", dsn=db).returncode == 0
    eventually(lambda: status_of(conn, task) == "success", timeout=5)


def test_a_node_serving_only_a_paused_queue_takes_it_up_once_resumed(db, conn, start_node):
    """Nothing else it serves can be claimed meanwhile, so only the resume's NOTIFY can
    tell it to read the pauses again."""
    assert run_cli("pause", "mail", dsn=db).returncode == 0
    start_node(queues="mail", poll_interval=60)
    task = add(conn, "tests.tasks:ok", [], queue="mail")
    time.sleep(1.0)
    assert status_of(conn, task) == "waiting"
    assert run_cli("resume", "mail", dsn=db).returncode == 0
    eventually(lambda: status_of(conn, task) == "success", timeout=5)


def test_enqueue_in_runs_after_the_delay(db, conn, start_node):
    start_node(poll_interval=60)
    task = int(run_cli("enqueue", "tests.tasks:ok", "--in", "1.5", dsn=db).stdout)
    time.sleep(1.0)
    assert status_of(conn, task) == "waiting"
    eventually(lambda: status_of(conn, task) == "success", timeout=4)


def test_each_cron_tick_is_enqueued_once_across_several_nodes(db, conn, start_node):
    modules = "tests.tasks,tests.periodic_tasks"
    for _ in range(3):
        start_node(task_modules=modules)
    eventually(lambda: conn.execute("SELECT count(*) FROM stagerunner.tasks WHERE name = "
                                    "'tests.every_minute' AND status = 'success'").fetchone()[0], timeout=10)
    time.sleep(1.0)
    ticks = conn.execute("SELECT run_at, count(*) FROM stagerunner.tasks WHERE name = "
                         "'tests.every_minute' GROUP BY run_at").fetchall()
    assert ticks and all(n == 1 for _, n in ticks)


def test_cancel_a_waiting_and_a_running_task(db, conn, start_node, tmp_path):
    node = start_node(consumers=1, max_job_timeout=60)
    pidfile = tmp_path / "pid"
    running = add(conn, "tests.tasks:spawn_grandchild_then_sleep", [str(pidfile)], timeout=60)
    waiting = add(conn, "tests.tasks:ok", [], delay=3600)
    eventually(pidfile.exists, timeout=10)
    out = run_cli("cancel", str(running), str(waiting), "--json", dsn=db)
    assert json.loads(out.stdout)["cancelled"] == {str(running): "running", str(waiting): "cancelled"}
    eventually(lambda: status_of(conn, running) == "cancelled", timeout=5)
    eventually(lambda: not pid_alive(int(pidfile.read_text())), timeout=5)
    time.sleep(1.5)
    assert status_of(conn, running) == "cancelled"  # never retried
    assert "stage.restarted" not in node.log()  # cancelling is not a crash
    after = add(conn, "tests.tasks:ok", [])
    eventually(lambda: status_of(conn, after) == "success", timeout=5)


def test_cancel_through_the_python_api(conn):
    task = add(conn, "tests.tasks:ok", [])
    assert stagerunner.cancel([task, 10**9], conn=conn) == {task: "cancelled"}


def test_retention_prunes_old_finished_tasks_and_nothing_else(conn, start_node, insert_task):
    old = insert_task(status="success", finished_at="2000-01-01T00:00:00Z")
    fresh = insert_task(status="success", finished_at="now()")
    waiting = insert_task(created_at="2000-01-01T00:00:00Z")
    start_node(retention="1h")
    eventually(lambda: conn.execute("SELECT count(*) FROM stagerunner.tasks WHERE id = %s",
                                    [old["id"]]).fetchone()[0] == 0, timeout=10)
    ids = {r[0] for r in conn.execute("SELECT id FROM stagerunner.tasks").fetchall()}
    assert {fresh["id"], waiting["id"]} <= ids


def test_list_show_retry_and_purge_from_the_cli(db, conn, insert_task):
    failed = insert_task("tests.tasks:boom", status="error", attempts=3, max_attempts=3,
                         last_error="Traceback …\nValueError: boom", finished_at="now()")
    conn.execute("""UPDATE stagerunner.tasks SET errors = '[{"attempt": 3, "status": "error",
                    "error": "Traceback …\\nValueError: boom", "runtime_ms": 1.5}]' WHERE id = %s""",
                 [failed["id"]])
    insert_task(status="success", finished_at="2000-01-01T00:00:00Z")
    listed = json.loads(run_cli("list", "--status", "error", "--json", dsn=db).stdout)
    assert [r["id"] for r in listed] == [failed["id"]]
    assert "ValueError: boom" in run_cli("show", str(failed["id"]), dsn=db).stdout
    assert json.loads(run_cli("retry", "--failed", "--json", dsn=db).stdout) == {
        "retried": [failed["id"]], "skipped_unique_key_held": []}
    row = conn.execute("SELECT status::text, max_attempts FROM stagerunner.tasks WHERE id = %s",
                       [failed["id"]]).fetchone()
    assert row == ("waiting", 4)
    assert json.loads(run_cli("purge", "--older-than", "1d", "--json", dsn=db).stdout) == {"deleted": 1}
    assert "(no tasks)" in run_cli("list", "--status", "timeout", dsn=db).stdout


def test_list_show_and_status_escape_terminal_controls_any_role_can_write(db, conn):
    """Any role that enqueues writes name, queue and unique_key; a job writes its error.
    An escape sequence in them must reach the operator's terminal escaped (a title set,
    the screen cleared, a line overwritten by a carriage return), and an errors column
    written by hand that is not an array of objects is shown, not a crash."""
    hostile = "app:x\x1b]0;owned\x07\x1b[2J\rfake"
    task_id = conn.execute(
        "INSERT INTO stagerunner.tasks (name, queue, unique_key, status, finished_at, errors) "
        "VALUES (%s, %s, %s, 'error', now(), %s::jsonb) RETURNING id",
        [hostile, "q\x1b[31m", "k\x9b2J", json.dumps([{"attempt": 1, "status": "error\x1b[8m",
                                                        "error": "Boom\x1b[1A\r\nline"}, 7])]
    ).fetchone()[0]
    bare = conn.execute("INSERT INTO stagerunner.tasks (name, errors) VALUES ('app:y', "
                        "'{\"not\": \"a list\"}') RETURNING id").fetchone()[0]
    conn.execute("INSERT INTO stagerunner.queues (name, paused) VALUES (%s, true) "
                 "ON CONFLICT (name) DO UPDATE SET paused = true", ["p\x1b[5m"])
    outputs = {}
    for command in (("list",), ("list", "--status", "error"), ("show", str(task_id)),
                    ("show", str(bare)), ("status",)):
        out = run_cli(*command, dsn=db)
        assert out.returncode == 0, (command, out.stderr[-500:])
        assert not any(c in out.stdout for c in "\x1b\x07\r\x9b"), (command, out.stdout)
        outputs[command[0]] = outputs.get(command[0], "") + out.stdout
    assert "app:x\\x1b]0;owned\\x07\\x1b[2J\\x0dfake" in outputs["show"]
    assert "    Boom\\x1b[1A\n" in outputs["show"] and "k\\x9b2J" in outputs["show"]
    assert '"a list"' in outputs["show"] and "\n    7" in outputs["show"]
    assert "p\\x1b[5m" in outputs["status"]


def test_status_watch_prints_a_line_per_refresh(db):
    out = run_cli("status", "--watch", "--json", "--count", "2", "--interval", "0.2", dsn=db)
    lines = [json.loads(line) for line in out.stdout.splitlines()]
    assert len(lines) == 2 and "throughput_per_s" in lines[0]


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_prometheus_metrics(conn, start_node):
    port = _free_port()
    start_node(metrics_port=port)
    for _ in range(3):
        add(conn, "tests.tasks:ok", [])
    eventually(lambda: conn.execute("SELECT count(*) FROM stagerunner.tasks WHERE status = 'success'"
                                    ).fetchone()[0] == 3, timeout=10)

    def scrape():
        return urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()

    body = eventually(lambda: "stagerunner_outcomes_total{" in scrape() and scrape(), timeout=5)
    families = {f.name: f for f in text_string_to_metric_families(body)}  # Prometheus's parser
    samples = {(s.name, tuple(sorted(s.labels.items()))): s.value
               for f in families.values() for s in f.samples}
    assert samples[("stagerunner_finished_tasks", (("status", "success"),))] == 3
    assert samples[("stagerunner_outcomes_total", (("queue", "default"), ("status", "success")))] == 3
    assert samples[("stagerunner_job_runtime_seconds_count", (("queue", "default"),))] == 3
    assert samples[("stagerunner_credits_outstanding", ())] == 18  # 2 consumers x (1 + 8 prefetched)
    assert families["stagerunner_job_runtime_seconds"].type == "histogram"
    health = urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=5)
    ready = urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=5)
    assert (health.status, ready.status) == (200, 200)


def test_ps_shows_each_stage_role_and_node(start_node):
    node = start_node(node_name="web-1")

    def titles():
        found = []
        for pid in descendants(node.proc.pid):
            try:
                with open(f"/proc/{pid}/cmdline", "rb") as f:
                    found.append(f.read().replace(b"\0", b" ").decode().strip())
                with open(f"/proc/{pid}/comm") as f:
                    comm = f.read().strip()
                if comm.startswith("sr-job-c"):
                    found[-1] = "job " + comm
            except OSError:
                pass
        return found

    # job children inherit their fork helper's command line; `comm` names them sr-job-c<slot>
    def settled():
        found = titles()
        return (sum(t.startswith("stagerunner: consumer") and "node=web-1" in t for t in found) == 2
                and sum(t.startswith("stagerunner: forker") and "node=web-1" in t
                        for t in found) == 2
                and sum(t.startswith("job sr-job-c") for t in found) == 2
                and any(t.startswith("stagerunner: producer node=web-1") for t in found))

    eventually(settled, timeout=10)
    with open(f"/proc/{node.proc.pid}/cmdline", "rb") as f:
        assert f.read().startswith(b"stagerunner: supervisor node=web-1")


def test_the_least_privilege_roles_are_enough(db, conn, start_node):
    """Runs the README's GRANT statements (role names made unique: roles are cluster-wide)."""
    import os
    import re

    readme = (__import__("tests.helpers").helpers.ROOT / "README.md").read_text()
    sql = readme.split("```sql\nCREATE ROLE stagerunner LOGIN")[1].split("```")[0]
    sql = "CREATE ROLE stagerunner LOGIN" + sql
    runner_role, app_role = f"sr_runner_{os.getpid()}", f"sr_app_{os.getpid()}"
    sql = re.sub(r"\bapp_enqueue\b", app_role, re.sub(r"\bTO stagerunner\b", f"TO {runner_role}", sql))
    sql = sql.replace("CREATE ROLE stagerunner LOGIN PASSWORD '…'",
                      f"CREATE ROLE {runner_role} LOGIN PASSWORD 'pw-runner'")
    sql = sql.replace(f"CREATE ROLE {app_role} LOGIN PASSWORD '…'",
                      f"CREATE ROLE {app_role} LOGIN PASSWORD 'pw-app'")
    uncommented = "\n".join(line for line in sql.splitlines() if not line.startswith("--"))
    statements = [s for s in uncommented.split(";") if s.strip()]
    try:
        for statement in statements:
            conn.execute(statement)
        info = conninfo_to_dict(db)
        runner = make_conninfo(**{**info, "user": runner_role, "password": "pw-runner"})
        app = make_conninfo(**{**info, "user": app_role, "password": "pw-app"})
        import psycopg

        with psycopg.connect(app, autocommit=True) as app_conn:
            task = stagerunner.enqueue("tests.tasks:ok", [], conn=app_conn, unique_key="lp")
            assert stagerunner.enqueue("tests.tasks:ok", [], conn=app_conn, unique_key="lp") == task
            many = stagerunner.enqueue_many([("tests.tasks:add", [1, 2])] * 3, conn=app_conn)
            from stagerunner import inserts  # a large enqueue stages its rows in a temp table

            assert len(stagerunner.enqueue_many([("tests.tasks:ok", [])] * inserts.COPY_MIN, delay=3600,
                                                conn=app_conn)) == inserts.COPY_MIN
            for forbidden in (  # a new task's own columns only: nothing a node decides
                    "UPDATE stagerunner.tasks SET status = 'success'",
                    "UPDATE stagerunner.tasks SET claimed_by = 'me', attempts = 0",
                    "INSERT INTO stagerunner.tasks (id, name) VALUES (10000, 'x')",
                    "INSERT INTO stagerunner.tasks (name, status) VALUES ('x', 'running')",
                    "INSERT INTO stagerunner.tasks (name, attempts) VALUES ('x', 5)",
                    "DELETE FROM stagerunner.tasks"):
                with pytest.raises(psycopg.errors.InsufficientPrivilege):
                    app_conn.execute(forbidden)
        out = run_cli("enqueue", "tests.tasks:ok", dsn=app)
        assert out.returncode == 0 and out.stdout.strip().isdigit(), out.stderr
        start_node(dsn=runner, retention="1h")
        for task_id in (task, *many, int(out.stdout)):
            eventually(lambda: status_of(conn, task_id) == "success", timeout=10)
        assert stagerunner.result(many[0], timeout=10, dsn=app) == 3  # the app reads its result
    finally:
        for role in (runner_role, app_role):
            conn.execute(f"DROP OWNED BY {role}")
            conn.execute(f"DROP ROLE IF EXISTS {role}")
