"""Every task that becomes runnable starts within moments, whatever the fallback poll
(60 s here): a new task, a retry from the CLI, a retry after its backoff, a task handed
back by a stopping node, a rescued task, a delay that runs out, and a task prefetched
behind a long job while another consumer is idle."""

from __future__ import annotations

import signal
import time

import pytest

from stagerunner_tools.invariants import insert_rows, rows, wait_terminal
from tests.helpers import eventually, run_cli

pytestmark = [pytest.mark.system, pytest.mark.timeout(120)]
SLOW_POLL = {"poll_interval": 60}


def started_within(conn, task_id: int, seconds: float) -> None:
    eventually(lambda: rows(conn, [task_id])[task_id]["status"] != "waiting", timeout=seconds,
               interval=0.02)


def test_a_retry_from_the_cli_starts_at_once(db, conn, start_node):
    start_node(**SLOW_POLL)
    [task] = insert_rows(conn, "tests.tasks:ok", [[]], status="error", attempts=3,
                         finished_at="now")
    assert run_cli("retry", str(task), dsn=db).returncode == 0
    retried = time.monotonic()
    wait_terminal(conn, [task], timeout=10)
    assert time.monotonic() - retried < 3 and rows(conn, [task])[task]["status"] == "success"


def test_a_retry_runs_when_its_backoff_ends_not_at_the_next_poll(conn, start_node):
    start_node(**SLOW_POLL)
    [task] = insert_rows(conn, "tests.tasks:boom", [["once"]], max_attempts=2)
    wait_terminal(conn, [task], timeout=15)  # 1 s backoff between the two attempts
    row = rows(conn, [task])[task]
    assert row["attempts"] == 2 and row["status"] == "error"


def test_a_delayed_task_runs_when_due(conn, start_node):
    start_node(**SLOW_POLL)
    for _ in range(5):  # the race between the claim and the next due time was per claim
        task = conn.execute("INSERT INTO stagerunner.tasks (name, args, run_at) VALUES "
                            "('tests.tasks:ok', '[]', now() + interval '0.7 seconds') "
                            "RETURNING id").fetchone()[0]
        wait_terminal(conn, [task], timeout=5)
        row = rows(conn, [task])[task]
        assert row["status"] == "success" and row["claimed_at"] >= row["run_at"]


def test_tasks_handed_back_by_a_stopping_node_start_at_once_on_another(conn, start_node,
                                                                        recorder):
    leaving = start_node(consumers=1, prefetch=3, **SLOW_POLL)
    ids = recorder.enqueue(conn, 6, 0.5, timeout_s=10)
    eventually(recorder.running_now, timeout=20)
    staying = start_node(consumers=1, prefetch=0, **SLOW_POLL)
    staying.wait_stages(1)
    leaving.stop(signal.SIGTERM)  # it finishes its job and hands the prefetched ones back
    stopped = time.monotonic()
    wait_terminal(conn, ids, timeout=30, node=staying)
    assert time.monotonic() - stopped < 10  # 6 x 0.5 s of work, no 60 s poll in between
    assert leaving.events("task.released")


def test_a_task_prefetched_behind_a_long_job_runs_on_the_idle_consumer(conn, start_node, recorder):
    [long] = recorder.enqueue(conn, 1, 20.0, timeout_s=30)
    first, behind = recorder.enqueue(conn, 2, 1.0, timeout_s=30)
    # claimed together: the long job on one consumer, `first` on the other, and `behind`
    # prefetched by the consumer with the long job
    node = start_node(consumers=2, prefetch=1, **SLOW_POLL)
    wait_terminal(conn, [first, behind], timeout=15, node=node)
    runs = recorder.runs()
    started = {key: runs[key][0].start for key in (recorder.keys[first], recorder.keys[behind])}
    assert started[recorder.keys[behind]] - started[recorder.keys[first]] < 5  # not 20 s later
    assert rows(conn, [long])[long]["status"] == "running" and len(runs[recorder.keys[long]]) == 1
    assert node.events("task.released")


def test_a_task_handed_back_waits_for_a_consumer_instead_of_bouncing(conn, start_node, recorder):
    """One consumer, busy with a long job: what arrives for it is handed back once, then
    waits in the table until the consumer can take it, not claimed and released again
    for as long as the consumer had credits."""
    node = start_node(consumers=1, prefetch=8, **SLOW_POLL)
    node.wait_stages(1)
    [long] = recorder.enqueue(conn, 1, 2.0, timeout_s=30)
    eventually(recorder.running_now, timeout=20)
    [short] = recorder.enqueue(conn, 1, 0.0, timeout_s=30)
    wait_terminal(conn, [long, short], timeout=20, node=node)
    released = node.events("task.released")
    assert 1 <= len(released) <= 2, released  # a second only if a claim was on its way
