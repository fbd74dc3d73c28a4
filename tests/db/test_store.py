import time

import pytest

from stagerunner import opstore, store
from stagerunner.completer import decide
from stagerunner.protocol import Outcome, Status, Task
from stagerunner.rescuer import Rescuer

pytestmark = pytest.mark.db
OWNER = "node-a/1"


@pytest.fixture(autouse=True)
def leases(conn):
    """The owners these tests claim as hold a lease, as a producer's do before it claims."""
    for owner in (OWNER, "a", "b"):
        store.register_node(conn, owner=owner, node=owner, host="h", pid=1, queues="default",
                            lease_s=3600.0)


class TestClaim:
    def test_claims_at_most_the_limit_due_first_highest_priority_first(self, conn, insert_task):
        low = insert_task(priority=0)
        high = insert_task(priority=5)
        insert_task(run_at="2999-01-01T00:00:00Z")
        insert_task(queue="mail")
        claimed = store.claim_tasks(conn, owner=OWNER, queue="default", limit=5)[0]
        assert [c.task.id for c in claimed] == [high["id"], low["id"]]
        assert all(c.task.attempt == 1 for c in claimed)

    def test_claim_marks_rows_running_with_owner_and_attempt(self, conn, insert_task, get_task):
        t = insert_task(args=[1, 2])
        [c] = store.claim_tasks(conn, owner=OWNER, queue="default", limit=1)[0]
        row = get_task(t["id"])
        assert (row["status"], row["claimed_by"], row["attempts"]) == ("running", OWNER, 1)
        assert c.task.args == "[1, 2]" and row["claimed_at"] is not None

    def test_claim_skips_rows_locked_by_another_producer(self, connect, insert_task):
        first, second = insert_task(), insert_task()
        a, b = connect(), connect()
        with a.transaction():
            [got_a] = store.claim_tasks(a, owner="a", queue="default", limit=1)[0]
            [got_b] = store.claim_tasks(b, owner="b", queue="default", limit=1)[0]
        assert {got_a.task.id, got_b.task.id} == {first["id"], second["id"]}

    def test_an_owner_the_database_counts_as_dead_claims_nothing(self, conn, insert_task):
        """Its tasks may have been rescued (its lease shortened in the database, the
        database's clock stepped on): until its next heartbeat fences it, it must not start
        them again beside its jobs still running."""
        t = insert_task()
        conn.execute("UPDATE stagerunner.nodes SET expires_at = now() - interval '1 second' "
                     "WHERE owner = %s", [OWNER])
        assert store.claim_tasks(conn, owner=OWNER, queue="default", limit=5)[0] == []
        assert store.claim_tasks(conn, owner="never-registered", queue="default", limit=5)[0] == []
        assert [c.task.id for c in store.claim_tasks(conn, owner="a", queue="default",
                                                       limit=5)[0]] == [t["id"]]

    def test_claim_never_takes_running_or_finished_rows(self, conn, insert_task):
        for status in ("running", "success", "error", "timeout", "cancelled"):
            insert_task(status=status)
        assert store.claim_tasks(conn, owner=OWNER, queue="default", limit=10)[0] == []


class TestFinish:
    def test_outcomes_are_written_in_one_guarded_batch(self, conn, insert_task, get_task):
        ok = insert_task(status="running", claimed_by=OWNER)
        bad = insert_task(status="running", claimed_by=OWNER)
        written = store.finish_tasks(conn, owner=OWNER, finishes=[
            decide(Outcome(ok["id"], 1, Status.SUCCESS, 2.0, result='{"x": 1}'), lost=0, max_attempts=3),
            decide(Outcome(bad["id"], 1, Status.ERROR, 2.0, error="Traceback: boom"), lost=0,
                   max_attempts=1),
        ])
        assert written == {ok["id"]: "success", bad["id"]: "error"}
        assert get_task(ok["id"])["status"] == "success" and get_task(ok["id"])["result"] == {"x": 1}
        row = get_task(bad["id"])
        assert (row["status"], row["last_error"]) == ("error", "Traceback: boom")
        assert row["errors"][0]["attempt"] == 1 and row["finished_at"] is not None

    def test_a_retry_goes_back_to_waiting_with_a_later_run_at(self, conn, insert_task, get_task):
        t = insert_task(status="running", claimed_by=OWNER)
        f = decide(Outcome(t["id"], 1, Status.TIMEOUT, 1000.0, error="killed"), lost=0, max_attempts=3)
        store.finish_tasks(conn, owner=OWNER, finishes=[f])
        row = get_task(t["id"])
        assert row["status"] == "waiting" and row["claimed_by"] is None
        assert row["run_at"] > t["run_at"] and row["errors"][0]["status"] == "timeout"

    def test_a_late_write_from_a_superseded_attempt_changes_nothing(self, conn, insert_task, get_task):
        t = insert_task(status="running", claimed_by=OWNER, attempts=2)
        stale_attempt = decide(Outcome(t["id"], 1, Status.SUCCESS, 1.0, result="1"), lost=0, max_attempts=3)
        other_owner = decide(Outcome(t["id"], 2, Status.SUCCESS, 1.0, result="1"), lost=0, max_attempts=3)
        assert store.finish_tasks(conn, owner=OWNER, finishes=[stale_attempt]) == {}
        assert store.finish_tasks(conn, owner="someone/else", finishes=[other_owner]) == {}
        assert get_task(t["id"])["status"] == "running"

    def test_finished_rows_are_never_rewritten(self, conn, insert_task, get_task):
        t = insert_task(status="success", claimed_by=OWNER, attempts=1)
        f = decide(Outcome(t["id"], 1, Status.ERROR, 1.0, error="late"), lost=0, max_attempts=1)
        assert store.finish_tasks(conn, owner=OWNER, finishes=[f]) == {}
        assert get_task(t["id"])["status"] == "success"


class TestRelease:
    def test_unstarted_tasks_go_back_as_if_never_claimed(self, conn, insert_task, get_task):
        t = insert_task()
        [c] = store.claim_tasks(conn, owner=OWNER, queue="default", limit=1)[0]
        assert store.release_tasks(conn, owner=OWNER, tasks=[c.task]) == ({t["id"]}, [])
        row = get_task(t["id"])
        assert (row["status"], row["attempts"], row["claimed_by"]) == ("waiting", 0, None)

    def test_release_of_someone_elses_claim_does_nothing(self, conn, insert_task):
        insert_task()
        [c] = store.claim_tasks(conn, owner=OWNER, queue="default", limit=1)[0]
        assert store.release_tasks(conn, owner="other/1", tasks=[c.task]) == (set(), [])

    def test_release_unheld_hands_back_claims_we_never_received(self, conn, insert_task):
        kept, orphan = insert_task(status="running", claimed_by=OWNER), insert_task(status="running",
                                                                                  claimed_by=OWNER)
        insert_task(status="running", claimed_by="other/1")
        held = Task(kept["id"], 1, kept["name"], "[]")
        assert store.release_tasks(conn, owner=OWNER, tasks=[held], unheld=True) == ({orphan["id"]}, [])


def rescue(conn):
    return Rescuer("rescuer/1", "rescuer", "default", lease_s=3.0).rescue(conn)


class TestRescue:
    def beat(self, conn, owner, age_s=0.0, lease_s=3.0):
        """`owner` registers a lease of `lease_s`, as if its last heartbeat was `age_s` ago."""
        store.register_node(conn, owner=owner, node=owner.split("/")[0], host="h", pid=1,
                            queues="default", lease_s=lease_s)
        conn.execute("UPDATE stagerunner.nodes SET heartbeat_at = now() - make_interval(secs => %s),"
                     " expires_at = now() + make_interval(secs => %s) - make_interval(secs => %s)"
                     " WHERE owner = %s", [age_s, lease_s, age_s, owner])

    def test_tasks_of_a_dead_owner_go_back_to_waiting_as_a_lost_run(self, conn, insert_task, get_task):
        self.beat(conn, "dead/1", age_s=60)
        self.beat(conn, "live/1")
        dead = insert_task(status="running", claimed_by="dead/1")
        live = insert_task(status="running", claimed_by="live/1")
        rescued = rescue(conn)
        assert rescued == [(dead["id"], "waiting")]
        row = get_task(dead["id"])
        assert (row["status"], row["lost"], row["claimed_by"]) == ("waiting", 1, None)
        assert "let its lease run out" in row["last_error"]
        assert get_task(live["id"])["status"] == "running"

    def test_a_task_lost_with_its_node_any_number_of_times_is_never_given_up(self, conn,
                                                                               insert_task):
        self.beat(conn, "dead/1", age_s=60)
        t = insert_task(status="running", claimed_by="dead/1", lost=20, kills=2)
        assert rescue(conn) == [(t["id"], "waiting")]

    def test_a_row_whose_counter_is_at_its_limit_ends_in_error_and_the_others_are_rescued(
            self, conn, insert_task, get_task):
        """Hand-written (a role with the runner's grants): it failed the whole rescue, and
        with it every node's connect, over and over."""
        self.beat(conn, "dead/1", age_s=60)
        full = insert_task(status="running", claimed_by="dead/1", lost=2147483647)
        other = insert_task(status="running", claimed_by="dead/1")
        assert sorted(rescue(conn)) == sorted([(full["id"], "error"), (other["id"], "waiting")])
        assert "could not be stored" in get_task(full["id"])["last_error"]

    def test_a_waiting_row_whose_attempts_are_at_their_limit_does_not_stop_the_claim(
            self, conn, insert_task):
        insert_task(attempts=2147483647)
        fine = insert_task()
        claimed, _ = store.claim_tasks(conn, owner=OWNER, queue="default", limit=10)
        assert [c.task.id for c in claimed] == [fine["id"]]

    def test_an_owner_is_judged_by_its_own_lease_not_the_rescuers(self, conn, insert_task,
                                                                    get_task):
        """A rolling configuration change: a node with a 30 s lease, beaten 10 s ago, is
        alive, whatever a rescuer with a 3 s expiry thinks."""
        self.beat(conn, "slow/1", age_s=10, lease_s=30)
        self.beat(conn, "fast/1", age_s=10, lease_s=3)
        slow = insert_task(status="running", claimed_by="slow/1")
        fast = insert_task(status="running", claimed_by="fast/1")
        assert rescue(conn) == [(fast["id"], "waiting")]
        assert get_task(slow["id"])["status"] == "running"

    def test_an_expired_lease_is_never_extended(self, conn):
        self.beat(conn, "late/1", age_s=10, lease_s=3)
        assert store.beat_node(conn, owner="late/1") is None
        self.beat(conn, "alive/1", age_s=1, lease_s=3)
        assert 2.5 < store.beat_node(conn, owner="alive/1") <= 3.0

    def test_running_rows_of_an_owner_that_never_beat_are_orphans(self, conn, insert_task):
        t = insert_task(status="running", claimed_by="ghost/1")
        assert rescue(conn) == [(t["id"], "waiting")]

    def test_retired_owners_are_rescued_without_waiting_for_expiry(self, conn, insert_task):
        self.beat(conn, "old/1")
        t = insert_task(status="running", claimed_by="old/1")
        assert rescue(conn) == []
        store.retire_nodes(conn, owners=["old/1"])
        assert rescue(conn) == [(t["id"], "waiting")]


def test_every_claim_says_when_the_next_scheduled_task_is_due(conn, insert_task):
    assert store.claim_tasks(conn, owner=OWNER, queue="default", limit=5) == ([], None)
    conn.execute("INSERT INTO stagerunner.tasks (name, run_at) VALUES ('x', now() + interval '30 seconds'),"
                 " ('x', now() + interval '90 seconds'), ('x', now())")
    claimed, next_due = store.claim_tasks(conn, owner=OWNER, queue="default", limit=5)
    assert len(claimed) == 1 and 25 < next_due <= 30
    _, other = store.claim_tasks(conn, owner=OWNER, queue="mail", limit=5)
    assert other is None  # per queue


def test_a_task_that_falls_due_between_claims_is_never_missed(conn):
    """The claim and the next due time come from one snapshot at one now(): a row that was
    not due for the claim is always in the answer."""
    conn.execute("INSERT INTO stagerunner.tasks (name, run_at) "
                 "SELECT 'x', now() + make_interval(secs => g / 1000.0) FROM generate_series(1, 200) g")
    claimed_ids: set[int] = set()
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        claimed, next_due = store.claim_tasks(conn, owner=OWNER, queue="default", limit=5)
        claimed_ids |= {c.task.id for c in claimed}
        if len(claimed) < 5:  # drained for now: what is still waiting must have a due time
            waiting = conn.execute("SELECT count(*) FROM stagerunner.tasks "
                                   "WHERE status = 'waiting'").fetchone()[0]
            assert waiting == 0 or next_due is not None, (waiting, next_due)
            if not waiting:
                break
    assert len(claimed_ids) == 200


class TestUniqueKeys:
    """A uniqueness key is global: across queues and task names, at most one waiting or
    running task holds it."""

    def test_a_key_is_held_across_queues_and_names(self, conn):
        import stagerunner

        first = stagerunner.enqueue("tests.tasks:ok", [], conn=conn, unique_key="k", queue="a")
        assert stagerunner.enqueue("tests.tasks:add", [1, 2], conn=conn, unique_key="k",
                                   queue="b") == first

    def test_retrying_failed_tasks_skips_those_whose_key_is_held_and_retries_the_rest(
            self, conn, insert_task, get_task):
        held = insert_task(status="waiting", unique_key="k")
        blocked = insert_task(status="error", unique_key="k", attempts=3)
        twins = [insert_task(status="error", unique_key="j", attempts=3) for _ in range(2)]
        free = insert_task(status="timeout", attempts=3)
        retried, skipped = opstore.retry_tasks(conn, failed=True)
        assert retried == sorted([twins[1]["id"], free["id"]])  # the newest of the twins
        assert skipped == sorted([blocked["id"], twins[0]["id"]])
        assert get_task(blocked["id"])["status"] == "error"
        assert get_task(held["id"])["status"] == "waiting"

    def test_retrying_failed_tasks_is_not_stopped_by_a_counter_at_its_limit(
            self, conn, insert_task, get_task):
        """Hand-written counters: the new attempt allowance overflowed and the whole retry
        failed. Such a row can never be claimed again, so it is left as it is."""
        full = insert_task(status="error", attempts=2147483647, max_attempts=2147483647)
        far = insert_task(status="error", attempts=2147483646, max_attempts=3)
        fine = insert_task(status="timeout", attempts=3, max_attempts=3)
        retried, skipped = opstore.retry_tasks(conn, failed=True)
        assert (retried, skipped) == (sorted([far["id"], fine["id"]]), [])
        assert get_task(full["id"])["status"] == "error"
        assert get_task(far["id"])["max_attempts"] == 2147483647
        assert (get_task(fine["id"])["status"], get_task(fine["id"])["max_attempts"]) == ("waiting", 4)

    def test_losing_an_enqueue_race_returns_the_id_of_the_winner(self, db, conn):
        import threading

        import stagerunner

        barrier, ids, errors = threading.Barrier(6), [], []

        def racer() -> None:
            try:
                with store.connect(db) as c:
                    barrier.wait()
                    ids.append(stagerunner.enqueue("tests.tasks:ok", [], conn=c,
                                                   unique_key="race"))
            except Exception as exc:  # a loser must get the winner's id, never an error
                errors.append(exc)

        threads = [threading.Thread(target=racer) for _ in range(6)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        winner = conn.execute("SELECT id FROM stagerunner.tasks WHERE unique_key = 'race'"
                              ).fetchall()
        assert not errors, errors
        assert len(ids) == 6 and len(winner) == 1 and set(ids) == {winner[0][0]}


def test_a_rescue_passes_over_a_row_another_transaction_holds_locked(conn, connect,
                                                                     insert_task):
    TestRescue().beat(conn, "dead/1", age_s=60)
    held = insert_task(status="running", claimed_by="dead/1")
    other = insert_task(status="running", claimed_by="dead/1")
    app = connect()
    app.execute("BEGIN")
    app.execute("SELECT 1 FROM stagerunner.tasks WHERE id = %s FOR UPDATE", [held["id"]])
    assert rescue(conn) == [(other["id"], "waiting")]  # at once, not after the lock
    app.execute("COMMIT")
    assert rescue(conn) == [(held["id"], "waiting")]  # the next heartbeat's rescue
