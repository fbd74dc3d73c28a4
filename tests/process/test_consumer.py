"""A real consumer process over a real pipe, driven by a scripted producer. No database."""

import json
import multiprocessing
import os
import time

import pytest

from stagerunner import consumer, procs
from stagerunner.consumer import ConsumerConfig
from stagerunner.child import Limits
from stagerunner.protocol import (Batch, Bye, Cancel, Demand, Lease, Outcome, Return, Status, Stop,
                                  Task, decode, encode)
from stagerunner_tools.procfs import alive as pid_alive
from stagerunner_tools.procfs import descendants
from stagerunner_tools.runs import Records
from tests.helpers import eventually

pytestmark = [pytest.mark.process, pytest.mark.timeout(30)]


class Scripted:
    """Plays the producer's side of the protocol."""

    def __init__(self, window=1, return_after_s=60.0, **limits):
        ctx = multiprocessing.get_context("spawn")
        self.pipe, theirs = ctx.Pipe(duplex=True)
        config = ConsumerConfig(slot=0, queue="default", window=window,
                                limits=Limits(modules=("tests.tasks",), **limits),
                                return_after_s=return_after_s)
        env = {**os.environ, "SECRET_FREE": "1"}
        env = {k: v for k, v in env.items() if not k.startswith("STAGERUNNER_")}
        self.process = ctx.Process(target=consumer.main, args=(theirs, config, os.getpid(), env))
        self.process.start()
        theirs.close()
        self.send(Lease(procs.boottime() + 3600))  # what a producer sends after its heartbeat

    def send(self, message):
        self.pipe.send_bytes(encode(message))

    def recv(self, timeout=10.0):
        assert self.pipe.poll(timeout), "consumer said nothing"
        return decode(self.pipe.recv_bytes())

    def close(self):
        if self.process.is_alive():
            self.process.kill()
        self.process.join(5)


@pytest.fixture
def scripted():
    made = []

    def make(**limits):
        made.append(Scripted(**limits))
        return made[-1]

    yield make
    for s in made:
        s.close()


def task(i, name="tests.tasks:ok", args="[]"):
    return Task(i, 1, name, args)


def test_asks_first_then_reports_each_task_with_new_demand(scripted):
    c = scripted()
    assert c.recv() == Demand(1)
    c.send(Batch((task(1, "tests.tasks:add", "[1, 2]"),)))
    outcome = c.recv()
    assert isinstance(outcome, Outcome)
    assert (outcome.task_id, outcome.status, outcome.result, outcome.demand) == (1, Status.SUCCESS, "3", 1)


def test_bad_rows_end_in_error_without_taking_the_consumer_down(scripted):
    c = scripted()
    c.recv()
    c.send(Batch((task(1, "os:system", '["id"]'), task(2, "tests.tasks:add", "[1]"),
                  task(3, "tests.tasks:add", '"not a list"'), task(4))))
    got = {o.task_id: o for o in (c.recv(), c.recv(), c.recv(), c.recv())}
    assert "unknown task 'os:system'" in got[1].error and got[1].final
    assert "missing a required argument" in got[2].error
    assert "expected a JSON array or object" in got[3].error
    assert got[4].status is Status.SUCCESS and c.process.is_alive()


def test_cancel_kills_the_running_job_at_once(scripted, tmp_path):
    c = scripted()
    c.recv()
    runs = Records(tmp_path / "runs")
    c.send(Batch((task(1, "tests.tasks:record", json.dumps([str(runs.path), "k", 30])),)))
    eventually(runs.running_now)
    started = time.monotonic()
    c.send(Cancel(1))
    outcome = c.recv()
    assert outcome.status is Status.CANCELLED and time.monotonic() - started < 1.0
    c.send(Batch((task(2),)))  # the consumer carries on with a fresh child
    assert c.recv().status is Status.SUCCESS and c.process.is_alive()


def test_stop_lets_the_running_job_finish_and_returns_the_rest_unstarted(scripted, tmp_path):
    c = scripted()
    c.recv()
    runs = Records(tmp_path / "runs")
    c.send(Batch((task(1, "tests.tasks:record", json.dumps([str(runs.path), "k", 0.3])),
                  task(2), task(3))))
    eventually(runs.running_now)
    c.send(Stop())
    first = c.recv()
    assert (first.task_id, first.status, first.demand) == (1, Status.SUCCESS, 0)
    assert c.recv() == Bye((2, 3))
    c.process.join(5)
    assert c.process.exitcode == 0


def test_tasks_behind_a_long_job_are_handed_back_and_asked_for_again_when_it_ends(scripted):
    c = scripted(window=3, return_after_s=0.2, job_timeout=5)
    assert c.recv() == Demand(3)
    c.send(Batch((task(1, "tests.tasks:sleep_for", "[2]"), task(2), task(3))))
    assert c.recv() == Return((2, 3))  # after 0.2 s of the 2 s job, not after it
    first = c.recv()
    assert (first.task_id, first.status, first.demand) == (1, Status.SUCCESS, 3)


def test_jobs_do_not_see_stagerunner_variables(scripted, monkeypatch):
    # the consumer inherits this process's environment, as a node's consumers inherit the
    # supervisor's: its job children must not
    monkeypatch.setenv("STAGERUNNER_DATABASE_URL", "postgresql://app:hunter2@db.example/app")
    c = scripted()
    c.recv()
    c.send(Batch((task(1, "tests.tasks:env_has", '["SECRET_FREE"]'),
                  task(2, "tests.tasks:env_has", '["STAGERUNNER_DATABASE_URL"]'))))
    assert [c.recv().result, c.recv().result] == ["true", "false"]


def test_when_the_consumer_dies_its_job_children_die_with_it(scripted, tmp_path):
    c = scripted(job_timeout=30, max_job_timeout=30)
    c.recv()
    pidfile = tmp_path / "pid"
    c.send(Batch((task(1, "tests.tasks:spawn_grandchild_then_sleep", f'["{pidfile}"]'),)))
    eventually(pidfile.exists)
    job_children = descendants(c.process.pid)
    assert job_children
    c.process.kill()
    c.process.join(5)
    # the job child dies with its parent (PDEATHSIG) ...
    grandchild = int(pidfile.read_text())
    eventually(lambda: not any(pid_alive(p) for p in job_children if p != grandchild))
    # ... and the rest of the consumer's session is what the supervisor kills when it reaps it
    procs.kill_session(c.process.pid)
    eventually(lambda: not pid_alive(grandchild))


def test_a_consumer_whose_producer_vanishes_exits(scripted):
    c = scripted()
    c.recv()
    c.pipe.close()
    c.process.join(10)
    assert c.process.exitcode == 0
