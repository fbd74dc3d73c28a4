"""Anything that reaches a node from outside is untrusted input with a clear outcome:
notifications any role on the database may send, cancels, payloads of any size. No
stage crashes or restarts; a cancel takes effect only if the database says so."""

from __future__ import annotations

import psycopg
import pytest
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from stagerunner import opstore, store
from stagerunner_tools.dbs import dbname_of, terminate_node_sessions
from stagerunner_tools.invariants import check_rows, insert_rows, rows, wait_terminal
from tests.helpers import eventually

pytestmark = [pytest.mark.system, pytest.mark.timeout(120)]

NEIGHBOUR = "sr_neighbour"
HOSTILE = [  # (channel, payload) sent by another role while the node works
    ("stagerunner_cancel", "x"), ("stagerunner_cancel", "1"), ("stagerunner_cancel", ",,,-7,"),
    ("stagerunner_cancel", "9" * 7900), ("stagerunner_cancel", "\x01\x02 ünïcode"),
    ("stagerunner_tasks", "x" * 7900), ("stagerunner_tasks", "default,default,nope"),
    ("stagerunner_tasks", ""), ("stagerunner_queues", "default"), ("stagerunner_queues", "🙂"),
]


@pytest.fixture
def neighbour(db, conn):
    """A connection as another role of the same database: it may LOGIN and nothing else."""
    conn.execute(f"DROP ROLE IF EXISTS {NEIGHBOUR}")
    conn.execute(f"CREATE ROLE {NEIGHBOUR} LOGIN")
    info = conninfo_to_dict(db)
    info["user"] = NEIGHBOUR
    other = psycopg.connect(make_conninfo(**info), autocommit=True)
    yield other
    other.close()
    conn.execute(f"DROP ROLE {NEIGHBOUR}")


def test_notifications_from_anyone_neither_crash_nor_restart_nor_cancel(
        conn, start_node, neighbour, recorder):
    node = start_node(consumers=2, prefetch=0)
    ids = recorder.enqueue(conn, 4, 1.5, timeout_s=10)  # running while the storm hits
    eventually(lambda: len(recorder.running_now()) == 2, timeout=20)
    running = [i for i, r in rows(conn, ids).items() if r["status"] == "running"]
    for _ in range(50):
        for channel, payload in HOSTILE:
            neighbour.execute("SELECT pg_notify(%s, %s)", [channel, payload])
        for task_id in running:  # a bare task id: a cancel nobody asked for
            neighbour.execute("SELECT pg_notify('stagerunner_cancel', %s)", [str(task_id)])
    wait_terminal(conn, ids, timeout=60, node=node)
    found = check_rows(conn, ids)
    assert {r["status"] for r in found.values()} == {"success"}, found
    recorder.check(conn, ids)
    for event in ("stage.restarted", "producer.crashed", "consumer.crashed", "task.cancelled"):
        assert not node.events(event), node.events(event)
    assert node.proc.poll() is None


def test_a_cancel_sent_while_the_node_is_reconnecting_is_not_lost(db, conn, start_node, recorder):
    node = start_node(consumers=1)
    [task] = recorder.enqueue(conn, 1, 30.0, max_attempts=1, timeout_s=60)
    eventually(recorder.running_now, timeout=20)
    with psycopg.connect(db, autocommit=True) as admin:
        terminate_node_sessions(admin, dbname_of(db))
        # the node's LISTEN connection is gone: this notification reaches nobody
        assert opstore.cancel_tasks(conn, ids=[task]) == [(task, "running")]
    eventually(lambda: rows(conn, [task])[task]["status"] == "cancelled", timeout=20)
    eventually(lambda: not recorder.running_now(), timeout=5)
    assert node.events("db.disconnected")


def test_cancelling_thousands_of_running_tasks_in_one_call_works(conn, start_node, recorder):
    node = start_node(consumers=2, max_job_timeout=60, prefetch=0)  # one job per consumer
    live = recorder.enqueue(conn, 2, 30.0, timeout_s=60)
    eventually(lambda: len(recorder.running_now()) == 2, timeout=20)
    # thousands more running, as if on other nodes that are alive
    store.register_node(conn, owner="elsewhere/1", node="elsewhere", host="h", pid=1,
                        queues="default", lease_s=600)
    others = insert_rows(conn, "tests.tasks:ok", [[]] * 3000, status="running",
                         claimed_by="elsewhere/1", attempts=1)
    changed = opstore.cancel_tasks(conn, ids=live + others)
    assert len(changed) == 3002 and {s for _, s in changed} == {"running"}
    eventually(lambda: {r["status"] for r in rows(conn, live).values()} == {"cancelled"},
               timeout=20)
    eventually(lambda: not recorder.running_now(), timeout=5)
    assert node.proc.poll() is None and not node.events("stage.restarted")
