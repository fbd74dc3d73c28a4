"""The producer and the supervisor driven through ``step(now)`` in this process, against a
real database. The test plays the other side of each pipe, so what a stage does on each
message is checked without a node around it: the producer's claim, dispatch and outcome
write, a consumer death it reports; the supervisor's restarts and its stop sequence."""

from __future__ import annotations

import multiprocessing
import os
import signal
import time
from collections.abc import Callable
from typing import Any

import pytest

from stagerunner import config, procs
from stagerunner.producer import Producer, ProducerConfig
from stagerunner.protocol import (Alive, Attach, Batch, Bye, Demand, Died, Message, Outcome, Status,
                                  Stop, decode, encode)
from stagerunner.supervisor import Supervisor

pytestmark = [pytest.mark.db, pytest.mark.timeout(60)]


class Peer:
    """Our end of one pipe: what arrived, in order."""

    def __init__(self, end: Any) -> None:
        self.end = end
        self.seen: list[Message] = []

    def send(self, message: Message) -> None:
        self.end.send_bytes(encode(message))

    def drain(self) -> list[Message]:
        new = []
        while self.end.poll(0):
            new.append(decode(self.end.recv_bytes()))
        self.seen += new
        return new

    def of(self, kind: type) -> list[Any]:
        return [m for m in self.seen if isinstance(m, kind)]


def step_until(step: Callable[[float], None], done: Callable[[], bool], limit: float = 20.0) -> None:
    deadline = time.monotonic() + limit
    while not done():
        assert time.monotonic() < deadline, "the stage never got there"
        step(time.monotonic())


def status_of(conn: Any, task_id: int) -> tuple[str, int, int]:
    return conn.execute("SELECT status, attempts, lost FROM stagerunner.tasks WHERE id = %s",
                        [task_id]).fetchone()


# The producer ------------------------------------------------------------------------------

@pytest.fixture
def producer(db: str) -> Any:
    ours, theirs = multiprocessing.Pipe(duplex=True)
    config_ = ProducerConfig(dsn=db, owner="steps/1-0a0b0c", node="steps", queues=("default",),
                             poll_interval=0.5, heartbeat_interval=0.5, node_expiry=30.0,
                             max_job_timeout=30.0)
    made = Producer(theirs, config_)
    control = Peer(ours)
    consumer, producer_end = multiprocessing.Pipe(duplex=True)
    control.send(Attach(0, "default", os.getpid()))
    procs.send_handle(ours, producer_end.fileno(), os.getpid())
    producer_end.close()
    yield made, control, Peer(consumer)
    made.link.close()


def test_producer_step_claims_on_credit_and_writes_the_outcomes(producer, conn, insert_task):
    made, control, consumer = producer
    ids = [insert_task()["id"] for _ in range(3)]
    consumer.send(Demand(2))

    step_until(made.step, lambda: consumer.drain() and consumer.of(Batch))
    [batch] = consumer.of(Batch)
    assert [t.id for t in batch.tasks] == ids[:2]  # its credits, oldest first
    assert status_of(conn, ids[2]) == ("waiting", 0, 0)  # no credit, no claim
    for task in batch.tasks:
        consumer.send(Outcome(task.id, task.attempt, Status.SUCCESS, 1.0, result="1",
                              deadline_s=1.0))
    step_until(made.step, lambda: all(status_of(conn, i)[0] == "success" for i in ids[:2]))

    control.drain()
    assert control.of(Alive), "the producer reports to the supervisor from its loop"
    control.send(Stop())
    step_until(made.step, lambda: consumer.drain() and consumer.of(Stop))
    consumer.send(Bye(()))
    step_until(made.step, lambda: made.done)
    assert status_of(conn, ids[2]) == ("waiting", 0, 0)


def test_outcomes_due_with_a_claim_go_on_the_producers_second_connection(producer, conn,
                                                                        insert_task):
    """Each waits for its own statement, so the claim and the outcome write run at once on
    two connections (the completer's tests show they overlap)."""
    made, control, consumer = producer
    ids = [insert_task()["id"] for _ in range(4)]
    consumer.send(Demand(2))
    step_until(made.step, lambda: consumer.drain() and consumer.of(Batch))
    assert made.link.writer is None  # opened when first needed: nothing to write yet
    for task in consumer.of(Batch)[0].tasks:
        consumer.send(Outcome(task.id, task.attempt, Status.SUCCESS, 1.0, deadline_s=1.0))
    consumer.send(Demand(2))  # a claim is due with the outcomes
    step_until(made.step, lambda: consumer.drain() and len(consumer.of(Batch)) == 2)
    assert [status_of(conn, i)[0] for i in ids] == ["success"] * 2 + ["running"] * 2

    def last_statement(c: Any) -> str:
        return conn.execute("SELECT query FROM pg_stat_activity WHERE pid = %s",
                            [c.info.backend_pid]).fetchone()[0]

    assert last_statement(made.link.writer).lstrip().startswith("-- finish_tasks")
    assert made.link.writer.info.backend_pid != made.link.conn.info.backend_pid


def test_the_supervisor_hears_at_once_when_the_producer_starts_holding_tasks(producer,
                                                                           insert_task):
    """Its watchdog kills a silent producer sooner while it holds tasks; a producer that
    went from holding nothing to holding some says so before its next statement (which
    may hang), not when its next Alive is due (half a heartbeat, 0.25 s here)."""
    made, control, consumer = producer
    step_until(made.step, lambda: control.drain() and control.of(Alive))  # the first one
    made.wakeups.schedule("alive", time.monotonic() + 60)  # no periodic Alive from here on
    control.drain()
    insert_task()
    consumer.send(Demand(1))
    step_until(made.step, lambda: consumer.drain() and consumer.of(Batch))
    assert [a.held for a in control.drain() if isinstance(a, Alive)] == [1]
    insert_task()
    consumer.send(Demand(1))  # still holding one: the next claim says nothing new
    step_until(made.step, lambda: consumer.drain() and len(consumer.of(Batch)) == 2)
    assert not [m for m in control.drain() if isinstance(m, Alive)]


def test_producer_step_reports_a_consumer_death_and_hands_its_task_back(producer, conn,
                                                                        insert_task):
    made, control, consumer = producer
    task_id = insert_task()["id"]
    consumer.send(Demand(1))
    step_until(made.step, lambda: consumer.drain() and consumer.of(Batch))
    consumer.end.close()  # died with the job running

    step_until(made.step, lambda: control.drain() and control.of(Died))
    assert control.of(Died) == [Died(0, True)]  # blamed on the task, not the node
    step_until(made.step, lambda: status_of(conn, task_id)[0] == "waiting")
    assert status_of(conn, task_id) == ("waiting", 1, 1)  # a lost run: no attempt spent


# The supervisor ----------------------------------------------------------------------------

@pytest.fixture
def supervisor(db: str) -> Any:
    settings = config.load({}, database_url=db, consumers=2, task_modules=["tests.tasks"],
                           node_name="steps", retention=0, failed_retention=0,
                           heartbeat_interval=0.5, node_expiry=5.0)
    made = Supervisor(settings, settings.dsn())
    made.start()
    yield made
    for stage in made._stages():  # whatever a failed test left running
        procs.kill_session(stage.process.pid)
        stage.process.join(timeout=5)


def test_supervisor_step_restarts_what_dies_and_stops_in_order(supervisor, conn, insert_task):
    sup = supervisor
    first = insert_task()["id"]
    step_until(sup.step, lambda: status_of(conn, first)[0] == "success")

    consumer = sup.consumers[0].process.pid
    os.kill(consumer, signal.SIGKILL)
    step_until(sup.step, lambda: 0 in sup.consumers and sup.consumers[0].process.pid != consumer)
    assert sup.restarts == {"consumer": 1}

    owner, producer = sup.owner, sup.producer.process.pid
    os.kill(producer, signal.SIGKILL)
    step_until(sup.step, lambda: sup.producer is not None and sup.owner != owner
               and len(sup.consumers) == 2)
    assert sup.restarts == {"consumer": 1, "producer": 1}
    second = insert_task()["id"]
    step_until(sup.step, lambda: status_of(conn, second)[0] == "success")

    stages = [s.process for s in sup._stages()]
    sup.stop()
    step_until(sup.step, lambda: sup.exit_code is not None)
    assert sup.exit_code == 0
    assert not any(p.is_alive() for p in stages)
    left = conn.execute("SELECT count(*) FROM stagerunner.nodes WHERE owner = %s",
                        [sup.owner]).fetchone()[0]
    assert left == 0, "a node that stopped cleanly leaves no lease behind"
