"""The consumer's fork helper for real: it forks, the consumer kills, the helper reaps,
reports wait statuses, kills strays, and takes its children with it. No database."""

import os
import select
import signal
import subprocess
import sys
import time

import pytest

import tests.tasks  # noqa: F401  registers the test tasks
from stagerunner import registry
from stagerunner.child import Limits
from stagerunner.forker import Forker, ForkerGone
from stagerunner.protocol import Task
from stagerunner_tools.procfs import alive as pid_alive
from stagerunner_tools.procfs import comm, ppid_of
from tests.helpers import eventually

pytestmark = [pytest.mark.process, pytest.mark.timeout(30)]
LIMITS = Limits(modules=("tests.tasks",))


def resolve(name):
    return registry.resolve(name, LIMITS.modules).func


@pytest.fixture
def forker():
    f = Forker.start(LIMITS, resolve, "t0", "stagerunner: forker test")
    yield f
    if f.sock.fileno() != -1:
        f.close()


def reply_of(child, timeout=5.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        ready = select.select(child.fds(), [], [], 0.1)[0]
        if child.result_r in ready and (reply := child.poll_result()) is not None:
            return None if child.broken and child.exited(0.05) else reply  # as Job.check
        if child.pidfd in ready:
            return child.drain_result()
    raise AssertionError("no reply from the job child")


def test_a_child_runs_its_job_in_its_own_group_and_the_forker_reaps_it(forker):
    child = forker.take()
    assert ppid_of(child.pid) == forker.pid and os.getpgid(child.pid) == child.pid

    eventually(lambda: comm(child.pid) == "sr-job-t0")  # the child names itself once it runs
    child.send(Task(1, 1, "tests.tasks:add", "[2, 3]"))
    assert reply_of(child) == ["ok", "5"]
    forker.kill(child)
    eventually(lambda: not os.path.exists(f"/proc/{child.pid}"))  # reaped, not a zombie


@pytest.mark.parametrize("name, code", [
    ("tests.tasks:exit_nonzero", 3),
    ("tests.tasks:abort_self", -signal.SIGSEGV),
])
def test_the_wait_status_of_a_child_that_died_without_a_result_comes_back(forker, name, code):
    child = forker.take()
    child.send(Task(1, 1, name, "[]"))
    assert reply_of(child) is None
    assert os.waitstatus_to_exitcode(forker.kill(child, wait=True)) == code


def test_a_grandchild_that_escaped_the_group_is_killed_when_its_job_child_is_released(
        forker, tmp_path):
    pidfile = tmp_path / "pid"
    child = forker.take()
    child.send(Task(1, 1, "tests.tasks:escape_group_then_sleep", f'["{pidfile}"]'))
    eventually(lambda: pidfile.exists() and pidfile.read_text())
    stray = int(pidfile.read_text())
    forker.kill(child)  # what the consumer does at the deadline; nothing else follows
    eventually(lambda: not pid_alive(stray), timeout=5)


def test_closing_the_forker_kills_its_children_and_it_exits(forker):
    waiting = forker.take()
    busy = forker.take()
    busy.send(Task(1, 1, "tests.tasks:sleep_forever", "[]"))
    forker.close()
    assert not pid_alive(forker.pid)
    eventually(lambda: not pid_alive(waiting.pid) and not pid_alive(busy.pid))


def test_a_dead_forker_takes_its_children_with_it_and_the_consumer_hears_of_it(forker):
    child = forker.take()
    child.send(Task(1, 1, "tests.tasks:sleep_forever", "[]"))
    os.kill(forker.pid, signal.SIGKILL)
    eventually(lambda: not pid_alive(child.pid))  # PDEATHSIG
    with pytest.raises(ForkerGone):
        forker.kill(child, wait=True)
    with pytest.raises(ForkerGone):
        forker.take()


def test_a_release_naming_a_process_that_is_not_its_child_signals_nothing(forker):
    stranger = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        forker._send(b"R" + stranger.pid.to_bytes(4, "big"))
        forker.take()  # a round trip: the release has been handled by now
        assert stranger.poll() is None
    finally:
        stranger.kill()
        stranger.wait()


def test_a_reused_child_keeps_running_jobs_and_a_sweep_leaves_it_alone(tmp_path):
    limits = Limits(modules=("tests.tasks",), child_reuse=3)
    forker = Forker.start(limits, resolve, "t1")
    try:
        child = forker.take()
        for i in range(2):
            child.send(Task(i, 1, "tests.tasks:add", f"[{i}, 1]"))
            assert reply_of(child) == ["ok", str(i + 1)]
            forker.sweep(time.monotonic())
        forker.take()  # a round trip after the sweeps
        assert pid_alive(child.pid)
        forker.kill(child)
    finally:
        forker.close()
    assert not pid_alive(forker.pid)


def test_a_sweep_kills_what_a_job_of_a_reused_child_left_behind(tmp_path):
    limits = Limits(modules=("tests.tasks",), child_reuse=3)
    forker = Forker.start(limits, resolve, "t2")
    pidfile = tmp_path / "daemon"
    try:
        child = forker.take()
        child.send(Task(1, 1, "tests.tasks:daemonize", f'["{pidfile}"]'))
        reply = reply_of(child)
        daemon = int(reply[1])
        assert reply[0] == "ok" and pid_alive(daemon) and ppid_of(daemon) == forker.pid
        forker.sweep(time.monotonic())
        eventually(lambda: not pid_alive(daemon), timeout=5)
        assert pid_alive(child.pid)  # the reused child itself is kept
        forker.kill(child)
    finally:
        forker.close()


def test_sweeps_after_jobs_of_a_reused_child_go_out_at_most_every_tenth_of_a_second(tmp_path):
    limits = Limits(modules=("tests.tasks",), child_reuse=3)
    forker = Forker.start(limits, resolve, "t3")

    def leave_a_daemon(i):
        child.send(Task(i, 1, "tests.tasks:daemonize", f'["{tmp_path / str(i)}"]'))
        reply = reply_of(child)
        assert reply[0] == "ok"
        return int(reply[1])

    try:
        child = forker.take()
        t0 = time.monotonic()  # the forker's clock is the one it is given: no race with ours
        first = leave_a_daemon(1)
        forker.sweep(t0)  # none went out before: at once
        eventually(lambda: not pid_alive(first), timeout=5)
        second = leave_a_daemon(2)
        forker.sweep(t0 + 0.05)  # within 0.1 s of the last one: owed, not sent
        assert forker.sweep_due(t0 + 0.09) == pytest.approx(t0 + 0.1)
        assert pid_alive(second)
        assert forker.sweep_due(t0 + 0.1) is None  # due: sent now
        eventually(lambda: not pid_alive(second), timeout=5)
        assert forker.sweep_due(t0 + 0.2) is None and pid_alive(child.pid)
        forker.kill(child)
    finally:
        forker.close()
