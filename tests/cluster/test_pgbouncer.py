"""Through PgBouncer in transaction pooling mode (a real one: ``bouncer``): no startup
parameter, nothing left in a session, LISTEN over a direct connection or polling.

The bouncer rotates transactions over its server connections (``server_round_robin``),
so a statement prepared in one session is missing in the next: the tests would see it."""

from __future__ import annotations

import json
import time
import urllib.request

import psycopg
import pytest

import stagerunner
from stagerunner import opstore, store
from stagerunner_tools.invariants import check_rows, wait_terminal
from stagerunner_tools.pgserver import free_port
from tests.helpers import eventually, run_cli

pytestmark = [pytest.mark.system, pytest.mark.timeout(120)]


def status_of(conn, task_id):
    return conn.execute("SELECT status::text FROM stagerunner.tasks WHERE id = %s",
                        [task_id]).fetchone()[0]


def server_connections(conn) -> int:
    """Other backends of this database: the bouncer's server connections."""
    return conn.execute("SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
                        "AND pid <> pg_backend_pid()").fetchone()[0]


def test_the_store_needs_pooled_connections_through_transaction_pooling(
        db, conn, bouncer, insert_task):
    pooled = bouncer.through(db)
    with pytest.raises(psycopg.OperationalError, match="unsupported startup parameter: options"):
        store.connect_guarded(pooled)  # what a node used to send
    for _ in range(40):
        insert_task()
    with store.connect_guarded(pooled, pooled=True) as work:
        # while a client is connected the bouncer fills this database's pool (min_pool_size);
        # from then on the client's transactions rotate over several server connections
        opstore.count_live_tasks(work)
        eventually(lambda: server_connections(conn) >= 3, timeout=15)
        store.register_node(work, owner="o/1", node="o", host="h", pid=1, queues="default",
                            lease_s=3600.0)  # a claim needs its owner's lease
        for _ in range(20):  # far past psycopg's prepare threshold of 5
            claims, _ = store.claim_tasks(work, owner="o/1", queue="default", limit=2)
            finishes = [store.Finish(c.task.id, c.task.attempt, "success", "success", "1")
                        for c in claims]
            assert set(store.finish_tasks(work, owner="o/1", finishes=finishes)) == {
                c.task.id for c in claims}
    # the same loop with psycopg's automatic preparing fails through this pooler: the test
    # above would catch a connection that prepared
    with store.connect(pooled) as prepared, pytest.raises(psycopg.errors.InvalidSqlStatementName):
        for _ in range(40):
            opstore.count_live_tasks(prepared)


def listening(conn) -> int:
    """Backends of this database that LISTEN for the runner."""
    return conn.execute("SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
                        "AND pid <> pg_backend_pid() AND query LIKE '%%LISTEN stagerunner_tasks%%'").fetchone()[0]


def scrape(port: int) -> bytes:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as answer:
        return answer.read()


def test_a_node_through_pgbouncer_without_listen_polls_and_loses_nothing(
        db, conn, bouncer, start_node, recorder):
    pooled = bouncer.through(db)
    port = free_port()
    # two consumers and one prefetched task each: a node holds 4 of the 60 at a time, so
    # both nodes take part whichever polls first
    small = dict(pool_mode="transaction", poll_interval=0.3, consumers=2, prefetch=1)
    nodes = [start_node(dsn=pooled, node_name="pooled0", metrics_port=port, **small),
             start_node(dsn=pooled, node_name="pooled1", **small)]
    with psycopg.connect(pooled, autocommit=True, prepare_threshold=None) as app:
        ids = recorder.enqueue(app, 60, 0.02)
    # the metrics server reads the table at most once a second, through the pooler too:
    # scrape past psycopg's prepare threshold while the work drains
    for _ in range(7):
        assert b"stagerunner_tasks" in scrape(port)
        time.sleep(1.05)
    wait_terminal(conn, ids, timeout=60, node=nodes[0])
    found = check_rows(conn, ids)
    assert {r["status"] for r in found.values()} == {"success"}
    recorder.check(conn, ids)
    assert {r["claimed_by"].split("/")[0] for r in found.values()} == {"pooled0", "pooled1"}
    for node in nodes:  # said once, and no statement failed
        assert len(node.events("db.polling")) == 1, node.log_tail()
        assert not node.events("db.disconnected"), node.log_tail()
        assert not node.events("metrics.query_failed"), node.log_tail()
    assert listening(conn) == 0
    for node in nodes:
        assert node.stop() == 0


def test_a_polling_node_still_honours_pause_and_cancel(db, conn, bouncer, start_node, tmp_path):
    pooled = bouncer.through(db)
    start_node(dsn=pooled, pool_mode="transaction", poll_interval=0.3, consumers=1,
               max_job_timeout=60, queues="default,mail=1")
    env = {"pool_mode": "transaction"}
    assert run_cli("pause", "mail", dsn=pooled, **env).returncode == 0
    mail = stagerunner.enqueue("tests.tasks:ok", [], conn=conn, queue="mail")
    pidfile = tmp_path / "pid"
    running = stagerunner.enqueue("tests.tasks:spawn_grandchild_then_sleep", [str(pidfile)],
                                  conn=conn, timeout=60)
    eventually(pidfile.exists, timeout=10)
    assert status_of(conn, mail) == "waiting"
    out = run_cli("cancel", str(running), "--json", dsn=pooled, **env)
    assert json.loads(out.stdout)["cancelled"] == {str(running): "running"}
    eventually(lambda: status_of(conn, running) == "cancelled", timeout=5)
    assert status_of(conn, mail) == "waiting"
    assert run_cli("resume", "mail", dsn=pooled, **env).returncode == 0
    eventually(lambda: status_of(conn, mail) == "success", timeout=5)


def test_with_a_listen_url_a_node_behind_pgbouncer_wakes_on_notify(db, conn, bouncer, start_node):
    node = start_node(dsn=bouncer.through(db), pool_mode="transaction", poll_interval=30,
                      listen_database_url=db)
    first = stagerunner.enqueue("tests.tasks:ok", [], conn=conn)
    eventually(lambda: status_of(conn, first) == "success", timeout=10)
    # the node is up and has claimed: from here on only a NOTIFY (or the 30 s poll) wakes it
    started = time.monotonic()
    second = stagerunner.enqueue("tests.tasks:ok", [], conn=conn)
    eventually(lambda: status_of(conn, second) == "success", timeout=5)
    assert time.monotonic() - started < 5
    assert not node.events("db.polling")
    assert listening(conn) == 1
