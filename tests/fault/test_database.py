"""Database trouble, on a PostgreSQL server of our own (see conftest.private_pg): restart
it under load (-m fast and -m immediate), stop it for longer than the node expiry, and
pg_terminate_backend the producer's connections over and over."""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Sequence
from typing import Any

import pytest

from stagerunner_tools.dbs import connect_retrying, dbname_of, terminate_node_sessions
from stagerunner_tools.invariants import FINISHED, check_alive, check_rows
from tests.helpers import assert_no_job_leftovers, eventually

pytestmark = [pytest.mark.system, pytest.mark.timeout(240)]



@pytest.fixture
def db(private_db: str) -> str:
    """start_node's database: on the private server, which these tests restart."""
    return private_db


def finished(dsn: str, ids: Sequence[int]) -> int:
    try:
        with connect_retrying(dsn, timeout=5) as c:
            return c.execute("SELECT count(*) FROM stagerunner.tasks WHERE id = ANY(%s) "
                             "AND status::text = ANY(%s)", [list(ids), list(FINISHED)]).fetchone()[0]
    except Exception:  # the server is restarting
        return -1


def wait_finished(dsn: str, ids: Sequence[int], node: Any, timeout: float = 90) -> None:
    def done() -> bool:
        check_alive(node)
        return finished(dsn, ids) == len(ids)

    eventually(done, timeout=timeout, interval=0.2)


def runs_per_key(recorder) -> dict[str, int]:
    return {k: len(v) for k, v in recorder.runs().items()}


@pytest.mark.parametrize("mode", ["fast", "immediate"])
def test_a_database_restart_under_load_loses_no_outcome(private_pg, db, start_node, recorder, mode):
    node = start_node(consumers=2, node_expiry=10)
    with connect_retrying(db) as conn:  # short jobs: outcomes keep arriving during the outage
        ids = recorder.enqueue(conn, 80, 0.1, timeout_s=5)
    eventually(lambda: finished(db, ids) >= 4, timeout=30)

    outage = private_pg.restart(mode)
    assert outage < 8, f"the restart took {outage:.1f}s, longer than the node expiry allows"

    wait_finished(db, ids, node)
    with connect_retrying(db) as conn:
        found = check_rows(conn, ids)
        assert {r["status"] for r in found.values()} == {"success"}
        runs = recorder.check(conn, ids)
    assert node.events("db.disconnected") and len(node.events("db.connected")) >= 2
    assert not node.events("producer.fenced"), "an outage shorter than the expiry fenced the producer"
    # the outage was far shorter than the node expiry: every outcome buffered meanwhile is
    # written, so no task ran twice
    twice = {k: [(r.start, r.ended) for r in v] for k, v in runs.items() if len(v) > 1}
    assert not twice, f"tasks re-run after a {outage:.1f}s outage: {twice}"
    assert {(r["attempts"], r["lost"]) for r in found.values()} == {(1, 0)}
    assert not node.events("task.stale_outcome")
    assert_no_job_leftovers(node, recorder.pids())
    assert node.proc.poll() is None


def test_an_outage_longer_than_the_expiry_fences_the_jobs_and_all_tasks_still_finish(
        private_pg, db, start_node, recorder):
    node = start_node(consumers=2, node_expiry=2, heartbeat_interval=0.5)
    with connect_retrying(db) as conn:  # jobs that outlast the lease
        ids = recorder.enqueue(conn, 8, 4.0, timeout_s=10)
    eventually(lambda: len(recorder.running_now()) == 2, timeout=30, interval=0.02)
    running = recorder.running_now()
    private_pg.stop("immediate")
    stopped_at = time.time()
    try:
        # no heartbeat can extend the lease (2 s): the kernel kills the jobs at its end
        eventually(lambda: not recorder.running_now(), timeout=15, interval=0.05)
        assert node.proc.poll() is None
    finally:
        private_pg.start()
    for run in running:  # they died at the lease's end, not the job's (4 s)
        last = max(r.last for r in recorder.runs()[run.key] if r.pid == run.pid)
        assert last < stopped_at + 2.0, (run, last - stopped_at)

    wait_finished(db, ids, node)
    with connect_retrying(db) as conn:
        found = check_rows(conn, ids)
        assert {r["status"] for r in found.values()} == {"success"}
        recorder.check(conn, ids)
    assert node.events("stage.restarted")
    assert_no_job_leftovers(node, recorder.pids())
    assert node.proc.poll() is None


def test_terminating_the_producers_connections_over_and_over(private_pg, db, start_node, recorder):
    node = start_node(consumers=2, node_expiry=10)
    rng = random.Random(7)
    with connect_retrying(db) as conn:  # mixed lengths: the consumers do not finish in step
        ids = [tid for _ in range(60)
               for tid in recorder.enqueue(conn, 1, rng.uniform(0.05, 0.35), timeout_s=5)]
    stop = threading.Event()
    terminated: list[int] = []

    def terminator() -> None:
        while not stop.is_set():
            try:
                with connect_retrying(private_pg.admin_dsn, timeout=5) as admin:
                    terminated.append(terminate_node_sessions(admin, dbname_of(db)))
            except Exception:
                pass
            stop.wait(rng.uniform(0.15, 0.6))  # never in phase with the jobs

    thread = threading.Thread(target=terminator, daemon=True)
    thread.start()
    try:
        wait_finished(db, ids, node, timeout=120)
    finally:
        stop.set()
        thread.join(timeout=10)

    assert sum(terminated) >= 5, f"only {sum(terminated)} connections were terminated"
    with connect_retrying(db) as conn:
        found = check_rows(conn, ids)
        assert {r["status"] for r in found.values()} == {"success"}
        recorder.check(conn, ids)
    assert len(node.events("db.disconnected")) >= 3
    twice = {k: n for k, n in runs_per_key(recorder).items() if n > 1}
    assert not twice, f"tasks re-run although their outcomes reached the producer: {twice}"
    assert not node.events("task.stale_outcome")
    assert_no_job_leftovers(node, recorder.pids())
    assert node.proc.poll() is None


def test_a_database_peer_that_stops_answering_gets_the_producer_replaced(
        private_pg, db, start_node):
    """SIGSTOP the node's backends: on loopback the kernel still ACKs, so no socket error
    ever comes. The supervisor's watchdog must kill the stuck producer (and its consumers)
    and start a new one on fresh connections."""
    import os
    import signal

    import psycopg

    node = start_node(consumers=2)
    with psycopg.connect(db, autocommit=True) as conn:
        ids = [conn.execute("INSERT INTO stagerunner.tasks (name, args) VALUES "
                            "('tests.tasks:sleep_for', '[0.2]') RETURNING id").fetchone()[0]
               for _ in range(30)]
    eventually(lambda: finished(db, ids) >= 2, timeout=30)
    with psycopg.connect(db, autocommit=True) as conn:
        frozen = [pid for (pid,) in conn.execute(
            "SELECT pid FROM pg_stat_activity WHERE datname = %s AND application_name = "
            "'stagerunner' AND pid <> pg_backend_pid()", [dbname_of(db)]).fetchall()]
    assert frozen
    for pid in frozen:
        os.kill(pid, signal.SIGSTOP)
    try:
        eventually(lambda: node.events("producer.unresponsive"), timeout=20)
        eventually(lambda: len(node.events("db.connected")) >= 2, timeout=20)
    finally:
        for pid in frozen:
            try:
                os.kill(pid, signal.SIGCONT)
            except ProcessLookupError:
                pass
    wait_finished(db, ids, node)
    assert node.proc.poll() is None
    with connect_retrying(db) as conn:
        found = check_rows(conn, ids)
        assert {r["status"] for r in found.values()} == {"success"}


def test_an_outcome_held_up_by_a_locked_row_is_kept_through_a_reconnect_and_runs_once(
        db, conn, connect, start_node, recorder):
    """The outcome of a task whose row someone holds locked waits in the producer. Once, a
    reconnect meanwhile handed that task back as a claim whose result never arrived, and
    it ran again (the chaos run's `lock` and `pg-restart` faults found it)."""
    from stagerunner_tools.invariants import wait_terminal

    node = start_node(consumers=1)
    [tid] = recorder.enqueue(conn, 1, 0.3, timeout_s=10)
    eventually(recorder.running_now, timeout=15)
    app = connect()
    app.execute("BEGIN")
    app.execute("SELECT 1 FROM stagerunner.tasks WHERE id = %s FOR UPDATE", [tid])
    eventually(lambda: recorder.runs() and all(r.ended for r in recorder.runs()[recorder.keys[tid]]),
               timeout=10)
    time.sleep(0.3)  # its outcome reached the producer and found the row locked
    assert terminate_node_sessions(conn, dbname_of(db)) >= 1
    eventually(lambda: len(node.events("db.connected")) >= 2, timeout=20)
    time.sleep(0.5)
    app.execute("COMMIT")
    wait_terminal(conn, [tid], timeout=20, node=node)
    assert check_rows(conn, [tid])[tid]["status"] == "success"
    assert len(recorder.check(conn)[recorder.keys[tid]]) == 1  # ran once
