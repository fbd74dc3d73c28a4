"""A Hypothesis state machine drives the task lifecycle through the real SQL (claim,
finish, release, rescue, cancel, retry) from two owners, including stale writes from
superseded attempts, and checks a model of what each row must be after every step."""

from __future__ import annotations

from dataclasses import dataclass

import psycopg
import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from stagerunner import inserts, opstore, store
from stagerunner.completer import QUARANTINE_KILLS, decide
from stagerunner.protocol import Outcome, Status
from stagerunner.rescuer import Rescuer

pytestmark = [pytest.mark.db, pytest.mark.timeout(300)]
OWNERS = ("a/1", "b/1")


@dataclass
class Row:
    status: str = "waiting"
    attempts: int = 0
    lost: int = 0
    kills: int = 0
    max_attempts: int = 2
    owner: str | None = None
    cancel_requested: bool = False


@pytest.fixture
def lifecycle_db(db):
    return db


def test_task_lifecycle_matches_the_model(lifecycle_db):
    dsn = lifecycle_db

    class Lifecycle(RuleBasedStateMachine):
        def __init__(self) -> None:
            super().__init__()
            self.conn = psycopg.connect(dsn, autocommit=True)
            self.conn.execute("TRUNCATE stagerunner.tasks, stagerunner.nodes")
            for owner in OWNERS:
                store.register_node(self.conn, owner=owner, node=owner, host="h", pid=1,
                                    queues="default", lease_s=3600.0)
            self.model: dict[int, Row] = {}
            self.stale: list[tuple[int, int, str]] = []  # (task, attempt, owner) no longer current

        def teardown(self) -> None:
            self.conn.close()

        def running(self) -> list[int]:
            return [i for i, r in self.model.items() if r.status == "running"]

        @rule(n=st.integers(1, 3), max_attempts=st.integers(1, 3))
        def enqueue(self, n: int, max_attempts: int) -> None:
            ids = inserts.insert_tasks(self.conn, [inserts.NewTask("x", "[]", max_attempts=max_attempts)] * n)
            for i in ids:
                self.model[i] = Row(max_attempts=max_attempts)

        @rule(owner=st.sampled_from(OWNERS), limit=st.integers(1, 4))
        def claim(self, owner: str, limit: int) -> None:
            claimed, _ = store.claim_tasks(self.conn, owner=owner, queue="default", limit=limit)
            waiting = [i for i, r in self.model.items() if r.status == "waiting"]
            assert len(claimed) == min(limit, len(waiting))
            for c in claimed:
                row = self.model[c.task.id]
                assert row.status == "waiting"
                row.status, row.owner, row.attempts = "running", owner, row.attempts + 1
                assert c.task.attempt == row.attempts

        @precondition(lambda self: self.running())
        @rule(data=st.data(), status=st.sampled_from([Status.SUCCESS, Status.ERROR, Status.TIMEOUT]),
              lost=st.booleans(), suspect=st.booleans())
        def finish(self, data: st.DataObject, status: Status, lost: bool, suspect: bool) -> None:
            task_id = data.draw(st.sampled_from(self.running()))
            row = self.model[task_id]
            outcome = Outcome(task_id, row.attempts, status, 1.0, result="1" if status == "success" else None,
                              error=None if status == "success" else "e", lost=lost,
                              suspect=lost and suspect)
            finish = decide(outcome, lost=row.lost, max_attempts=row.max_attempts, kills=row.kills)
            assert row.kills + finish.kills <= QUARANTINE_KILLS
            written = store.finish_tasks(self.conn, owner=row.owner, finishes=[finish])
            assert set(written) == {task_id}
            self.stale.append((task_id, row.attempts, row.owner))
            row.lost += finish.lost
            row.kills += finish.kills
            row.status = "cancelled" if finish.status == "waiting" and row.cancel_requested else finish.status
            if row.status == "waiting":
                row.owner = None
                # let the backoff pass, so the row is claimable again
                self.conn.execute("UPDATE stagerunner.tasks SET run_at = now() WHERE id = %s", [task_id])

        @precondition(lambda self: self.running())
        @rule(data=st.data())
        def release(self, data: st.DataObject) -> None:
            task_id = data.draw(st.sampled_from(self.running()))
            row = self.model[task_id]
            from stagerunner.protocol import Task

            store.release_tasks(self.conn, owner=row.owner, tasks=[Task(task_id, row.attempts, "x", "[]")])
            self.stale.append((task_id, row.attempts, row.owner))
            row.attempts -= 1
            row.status = "cancelled" if row.cancel_requested else "waiting"
            row.owner = None

        @precondition(lambda self: self.stale)
        @rule(data=st.data())
        def stale_write_changes_nothing(self, data: st.DataObject) -> None:
            task_id, attempt, owner = data.draw(st.sampled_from(self.stale))
            row = self.model[task_id]
            if row.status == "running" and row.owner == owner and row.attempts == attempt:
                return  # re-claimed by the same owner with the same attempt number: not stale
            finish = decide(Outcome(task_id, attempt, Status.SUCCESS, 1.0, result="1"), lost=0,
                            max_attempts=9)
            assert store.finish_tasks(self.conn, owner=owner, finishes=[finish]) == {}

        @rule(owner=st.sampled_from(OWNERS))
        def owner_dies_and_is_rescued(self, owner: str) -> None:
            store.retire_nodes(self.conn, owners=[owner])
            rescued = dict(Rescuer("r/1", "r", "default", lease_s=3.0).rescue(self.conn))
            for task_id, row in self.model.items():
                if row.status == "running" and row.owner == owner:
                    self.stale.append((task_id, row.attempts, owner))
                    row.lost += 1
                    if row.cancel_requested:
                        row.status = "cancelled"
                    else:  # a lost node's tasks always come back
                        row.status, row.owner = "waiting", None
                    assert rescued[task_id] == row.status
            assert set(rescued) <= set(self.model)
            store.register_node(self.conn, owner=owner, node=owner, host="h", pid=1,
                                queues="default", lease_s=3600.0)

        @precondition(lambda self: self.model)
        @rule(data=st.data())
        def cancel(self, data: st.DataObject) -> None:
            task_id = data.draw(st.sampled_from(sorted(self.model)))
            row = self.model[task_id]
            changed = dict(opstore.cancel_tasks(self.conn, ids=[task_id]))
            if row.status == "waiting":
                row.status, row.cancel_requested = "cancelled", True
                assert changed == {task_id: "cancelled"}
            elif row.status == "running":
                row.cancel_requested = True
                assert changed == {task_id: "running"}
            else:
                assert changed == {}

        @rule()
        def retry_failed(self) -> None:
            retried = set(opstore.retry_tasks(self.conn, failed=True)[0])
            expected = {i for i, r in self.model.items() if r.status in ("error", "timeout")}
            assert retried == expected
            for i in retried:
                row = self.model[i]
                row.status, row.owner, row.cancel_requested = "waiting", None, False
                row.max_attempts = max(row.max_attempts, row.attempts - row.lost + 1)

        @invariant()
        def rows_match_the_model(self) -> None:
            rows = self.conn.execute("SELECT id, status::text, attempts, lost, claimed_by, max_attempts, "
                                     "kills FROM stagerunner.tasks").fetchall()
            assert len(rows) == len(self.model)
            for task_id, status, attempts, lost, claimed_by, max_attempts, kills in rows:
                row = self.model[task_id]
                assert (status, attempts, lost, kills) == (row.status, row.attempts, row.lost,
                                                           row.kills), task_id
                if status == "running":
                    assert claimed_by == row.owner
                if status == "waiting":
                    assert claimed_by is None
                assert attempts - lost <= max_attempts

    Lifecycle.TestCase.settings = settings(max_examples=40, stateful_step_count=30, deadline=None,
                                           suppress_health_check=list(HealthCheck))
    Lifecycle.TestCase().runTest()
