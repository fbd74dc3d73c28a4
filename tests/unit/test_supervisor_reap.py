"""The supervisor's reaping order, with stand-in processes: a consumer that left because its
producer went away (exit 0) is not a consumer crash, even when it is reaped before the
producer's own exit can be (found by bin/chaos: a SIGKILLed or fenced producer's consumers
were restarted one by one and counted against the restart limit)."""

from __future__ import annotations

from stagerunner import config, supervisor
from stagerunner.supervisor import Stage


class Proc:
    """A stage process: `dies_on_join` makes it exit during the supervisor's wait."""

    def __init__(self, pid: int, exitcode: int | None = None, dies_on_join: int | None = None):
        self.pid, self.exitcode, self.dies_on_join = pid, exitcode, dies_on_join
        self.joined: list[float | None] = []

    def is_alive(self) -> bool:
        return self.exitcode is None

    def join(self, timeout: float | None = None) -> None:
        self.joined.append(timeout)
        if self.dies_on_join is not None:
            self.exitcode = self.dies_on_join


def a_supervisor(monkeypatch) -> tuple[supervisor.Supervisor, list[str]]:
    settings = config.load({}, database_url="postgresql://x@127.0.0.1/x", consumers=2,
                           task_modules="")
    sup = supervisor.Supervisor(settings, "postgresql://x@127.0.0.1/x")
    started: list[str] = []
    monkeypatch.setattr(sup, "_start_producer", lambda replaces, how="restart": started.append("producer"))
    monkeypatch.setattr(sup, "_start_consumer", lambda slot, queue: started.append(f"consumer {slot}"))
    monkeypatch.setattr(sup, "_kill_all", lambda: sup.consumers.clear())
    monkeypatch.setattr(supervisor.procs, "kill_session", lambda pid: None)
    return sup, started


def test_an_orphaned_consumer_reaped_before_its_producer_is_no_consumer_crash(monkeypatch):
    sup, started = a_supervisor(monkeypatch)
    producer = Proc(100, dies_on_join=-9)  # SIGKILLed: reapable a moment after its consumer
    sup.producer = Stage(producer)
    sup.consumers = {0: Stage(Proc(101, exitcode=0), 0, "default"),  # saw the EOF first
                     1: Stage(Proc(102), 1, "default")}
    sup._reap(now=50.0)
    assert (sup.restarts["producer"], sup.restarts["consumer"]) == (1, 0)
    assert producer.joined[0] == supervisor.ORPHAN_WAIT_S  # then the reaping join
    assert started == ["producer", "consumer 0", "consumer 1"]
    assert sup.budget.unexplained == {}  # nothing left to count against the limit later


def test_a_consumer_that_crashed_is_restarted_alone_without_waiting(monkeypatch):
    sup, started = a_supervisor(monkeypatch)
    producer = Proc(100)
    sup.producer = Stage(producer)
    sup.consumers = {0: Stage(Proc(101, exitcode=-9), 0, "default")}
    sup._reap(now=50.0)
    assert producer.joined == []
    assert (sup.restarts["producer"], sup.restarts["consumer"]) == (0, 1)
    assert started == ["consumer 0"]


def test_a_consumer_that_left_while_its_producer_lives_on_is_restarted_after_the_wait(monkeypatch):
    sup, started = a_supervisor(monkeypatch)
    producer = Proc(100)  # closed that consumer's pipe and lives on
    sup.producer = Stage(producer)
    sup.consumers = {0: Stage(Proc(101, exitcode=0), 0, "default")}
    sup._reap(now=50.0)
    assert (sup.restarts["producer"], sup.restarts["consumer"]) == (0, 1)
    assert producer.joined == [supervisor.ORPHAN_WAIT_S] and started == ["consumer 0"]
