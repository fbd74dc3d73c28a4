import threading
import time

import psycopg
import pytest

from stagerunner import store
from stagerunner.completer import Completer
from stagerunner.demand import Claim
from stagerunner.protocol import Outcome, Status, Task

pytestmark = pytest.mark.db
OWNER = "n/1"


def locked_by_app(connect, task_id):
    """An application's transaction holding the task's row locked (its cancel inside its
    own long transaction, say); commit or roll it back to let go."""
    app = connect()
    app.execute("BEGIN")
    app.execute("SELECT 1 FROM stagerunner.tasks WHERE id = %s FOR UPDATE", [task_id])
    return app


def succeeded(task):
    """A completer holding one success outcome for `task`, not yet written."""
    completer = Completer(OWNER)
    completer.add(Outcome(task["id"], 1, Status.SUCCESS, 1.0), lost=0, max_attempts=1)
    return completer


def test_a_row_the_database_refuses_does_not_block_the_others(conn, insert_task, get_task):
    good = insert_task(status="running", claimed_by=OWNER)
    bad = insert_task(status="running", claimed_by=OWNER)
    completer = Completer(OWNER)
    completer.add(Outcome(good["id"], 1, Status.SUCCESS, 1.0, result="42"), lost=0, max_attempts=1)
    # NUL cannot live in a PostgreSQL text or jsonb value
    completer.add(Outcome(bad["id"], 1, Status.SUCCESS, 1.0, result='"a\\u0000b"'), lost=0, max_attempts=1)
    assert completer.flush(conn) == 2
    assert get_task(good["id"])["result"] == 42
    row = get_task(bad["id"])
    assert row["status"] == "error" and "could not be stored" in row["last_error"]
    assert completer.pending == []


def test_a_result_psycopg_cannot_send_is_refused_like_one_the_database_refuses(
        conn, insert_task, get_task):
    task = insert_task(status="running", claimed_by=OWNER)
    completer = Completer(OWNER)  # a reply forged in the child's pipe: a lone surrogate
    completer.add(Outcome(task["id"], 1, Status.SUCCESS, 1.0, result='"\ud800"'), lost=0,
                  max_attempts=1)
    assert completer.flush(conn) == 1
    row = get_task(task["id"])
    assert row["status"] == "error" and "could not be stored" in row["last_error"]


def test_a_row_that_refuses_even_the_error_loses_its_outcome_not_the_others(
        conn, insert_task, get_task):
    good = insert_task(status="running", claimed_by=OWNER)
    stuck = insert_task(status="running", claimed_by=OWNER)
    conn.execute(f"""
        CREATE FUNCTION pg_temp.refuse() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN RAISE EXCEPTION 'this row refuses every update'; END $$;
        CREATE TRIGGER refuse BEFORE UPDATE ON stagerunner.tasks FOR EACH ROW
            WHEN (OLD.id = {stuck["id"]}) EXECUTE FUNCTION pg_temp.refuse();""")
    completer = Completer(OWNER)
    for task in (stuck, good):
        completer.add(Outcome(task["id"], 1, Status.SUCCESS, 1.0), lost=0, max_attempts=1)
    assert completer.flush(conn) == 1  # no exception: the producer goes on
    assert get_task(good["id"])["status"] == "success"
    assert get_task(stuck["id"])["status"] == "running" and completer.pending == []


@pytest.mark.timeout(30)
def test_a_row_another_transaction_holds_locked_waits_alone_and_is_written_later(
        conn, connect, insert_task, get_task):
    """An application's cancel inside its own long transaction, say: once, every outcome
    of the node (and every node's rescue) waited for that lock, and the watchdog killed
    the producers."""


    held = insert_task(status="running", claimed_by=OWNER)
    free = insert_task(status="running", claimed_by=OWNER)
    app = locked_by_app(connect, held["id"])
    completer = Completer(OWNER)
    for task in (held, free):
        completer.add(Outcome(task["id"], 1, Status.SUCCESS, 1.0), lost=0, max_attempts=1)
    started = time.monotonic()
    assert completer.flush(conn) == 1 and time.monotonic() - started < 2
    assert get_task(free["id"])["status"] == "success"
    assert [f.task_id for f in completer.pending] == [held["id"]]
    assert completer.flush_at() > time.monotonic() + 0.3  # again in a moment, not at once
    app.execute("COMMIT")
    assert completer.flush(conn) == 1 and completer.pending == []
    assert get_task(held["id"])["status"] == "success"
    assert store.finish_tasks(conn, owner=OWNER, finishes=[]) == {}


@pytest.mark.timeout(30)
@pytest.mark.parametrize("unheld", [False, True], ids=["handed-back", "after-a-reconnect"])
def test_a_release_passes_over_a_row_another_transaction_holds_locked(
        conn, connect, insert_task, get_task, unheld):
    """A prefetched task handed back (or a claim found unheld after a reconnect) whose row
    an application holds locked: the release used to wait for the lock, and the producer
    with it, until the watchdog killed it. It is skipped, kept, and released later."""
    held = insert_task(status="running", claimed_by=OWNER, attempts=1)
    free = insert_task(status="running", claimed_by=OWNER, attempts=1)
    app = locked_by_app(connect, held["id"])
    completer = Completer(OWNER)
    started = time.monotonic()
    if unheld:
        released, busy = store.release_tasks(conn, owner=OWNER, tasks=[], unheld=True)
        assert (released, [(t.id, t.attempt) for t in busy]) == ({free["id"]}, [(held["id"], 1)])
        completer.release([Claim(t) for t in busy])  # what the producer's reconnect does
    else:
        completer.release([Claim(Task(t["id"], 1, t["name"], "[]")) for t in (held, free)])
        completer.write(conn, time.monotonic())
    assert time.monotonic() - started < 2
    assert get_task(free["id"])["status"] == "waiting"
    assert [c.task.id for c in completer.releases] == [held["id"]]
    assert completer.wake_at() > time.monotonic() + 0.3 or unheld  # again in a moment
    app.execute("COMMIT")
    completer.write(conn, time.monotonic() + 1)
    assert completer.releases == []
    row = get_task(held["id"])
    assert (row["status"], row["attempts"], row["claimed_by"]) == ("waiting", 0, None)


@pytest.mark.timeout(30)
def test_at_a_stop_an_outcome_waiting_for_a_locked_row_is_written_once_the_lock_goes(
        conn, connect, insert_task, get_task):
    """Left behind, it would be rescued by another node and the job, a success, run again."""
    task = insert_task(status="running", claimed_by=OWNER, attempts=1)
    app = locked_by_app(connect, task["id"])
    completer = succeeded(task)
    completer.write(conn, time.monotonic(), force=True)
    assert len(completer.pending) == 1
    threading.Timer(1.0, lambda: app.execute("COMMIT")).start()
    started = time.monotonic()
    completer.settle(conn, until=started + 10)
    assert completer.pending == [] and time.monotonic() - started < 3
    assert get_task(task["id"])["status"] == "success"


@pytest.mark.timeout(30)
def test_at_a_stop_a_lock_that_stays_is_waited_for_no_longer_than_the_limit(
        conn, connect, insert_task, get_task):

    task = insert_task(status="running", claimed_by=OWNER, attempts=1)
    app = locked_by_app(connect, task["id"])
    completer = succeeded(task)
    started = time.monotonic()
    completer.settle(conn, until=started + 1.2)
    assert 1.1 < time.monotonic() - started < 2.5
    assert [f.task_id for f in completer.pending] == [task["id"]]  # left to the rescue
    app.execute("ROLLBACK")
    assert get_task(task["id"])["status"] == "running"


@pytest.mark.timeout(30)
def test_beside_a_claim_the_outcomes_are_written_on_the_other_connection_meanwhile(
        conn, connect, insert_task, get_task):
    """The producer's claim and its outcome write each wait for their own statement, so
    they run at once on two connections: the write lands while the claim still runs."""

    task = insert_task(status="running", claimed_by=OWNER)
    completer = succeeded(task)
    seen = []

    def claim():  # stands for the claim: it runs until the outcome is visible elsewhere
        deadline = time.monotonic() + 10
        while get_task(task["id"])["status"] != "success" and time.monotonic() < deadline:
            time.sleep(0.01)
        seen.append(get_task(task["id"])["status"])

    completer.write(connect(), time.monotonic(), beside=claim, writer=connect)
    assert seen == ["success"] and completer.pending == []


@pytest.mark.timeout(30)
def test_a_writer_connection_that_broke_keeps_every_outcome_for_the_next_one(
        conn, connect, insert_task, get_task):


    task = insert_task(status="running", claimed_by=OWNER)
    completer = succeeded(task)
    broken = connect()
    broken.close()
    ran = []
    with pytest.raises(psycopg.OperationalError):
        completer.write(conn, time.monotonic(), beside=lambda: ran.append(1),
                        writer=lambda: broken)
    assert ran == [1] and len(completer.pending) == 1  # the claim ran; nothing was lost
    assert get_task(task["id"])["status"] == "running"
    assert completer.flush(connect()) == 1 and get_task(task["id"])["status"] == "success"


@pytest.mark.timeout(30)
def test_a_claim_that_fails_beside_a_write_that_succeeded_loses_neither(
        conn, connect, insert_task, get_task):
    """The claim's connection broke: the error reaches the producer (it reconnects), and
    the outcomes written meanwhile count as written, not to be written twice."""


    task = insert_task(status="running", claimed_by=OWNER)
    completer = succeeded(task)

    def claim():
        raise psycopg.OperationalError("the claim's connection broke")

    with pytest.raises(psycopg.OperationalError, match="claim's connection"):
        completer.write(conn, time.monotonic(), beside=claim, writer=connect)
    assert completer.pending == [] and get_task(task["id"])["status"] == "success"
