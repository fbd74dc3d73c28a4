"""Job children for real: deadlines, group kills, crashes, results. No database."""

import os
import time

import pytest

import tests.tasks  # noqa: F401  registers the test tasks
from stagerunner import executor, registry
from stagerunner.executor import Child, Limits
from stagerunner.protocol import Status, Task
from tests.helpers import eventually, pid_alive

pytestmark = [pytest.mark.process, pytest.mark.timeout(20)]
LIMITS = Limits(modules=("tests.tasks",))


def resolve(name):
    return registry.resolve(name, LIMITS.modules).func


def run(name, args="[]", timeout=1.0, limits=LIMITS):
    return executor.execute(Task(1, 1, name, args), timeout, limits, resolve)


@pytest.fixture(autouse=True, scope="module")
def _subreaper():
    executor.become_subreaper()  # as a consumer is: escaped grandchildren come back to us


def test_a_result_comes_back_as_json():
    outcome = run("tests.tasks:add", "[2, 3]")
    assert (outcome.status, outcome.result) == (Status.SUCCESS, "5")


def test_an_exception_ends_in_error_with_its_traceback():
    outcome = run("tests.tasks:boom", '["kaput"]')
    assert outcome.status is Status.ERROR
    assert "Traceback" in outcome.error and "ValueError: kaput" in outcome.error


def test_the_deadline_kills_the_child_and_its_grandchildren(tmp_path):
    pidfile = tmp_path / "pid"
    started = time.monotonic()
    outcome = run("tests.tasks:spawn_grandchild_then_sleep", f'["{pidfile}"]', timeout=1.0)
    assert outcome.status is Status.TIMEOUT
    assert 1.0 <= time.monotonic() - started < 1.5
    eventually(lambda: not pid_alive(int(pidfile.read_text())))


def test_a_grandchild_that_escaped_the_group_is_killed_too(tmp_path):
    pidfile = tmp_path / "pid"
    outcome = run("tests.tasks:escape_group_then_sleep", f'["{pidfile}"]', timeout=0.5)
    assert outcome.status is Status.TIMEOUT
    eventually(lambda: not pid_alive(int(pidfile.read_text())))


def test_ignoring_sigterm_does_not_stretch_the_deadline():
    started = time.monotonic()
    assert run("tests.tasks:ignore_sigterm", timeout=0.3).status is Status.TIMEOUT
    assert time.monotonic() - started < 0.8


def test_a_child_blocked_in_c_code_is_killed_at_the_deadline():
    started = time.monotonic()
    assert run("tests.tasks:blocked_in_c", timeout=0.3).status is Status.TIMEOUT
    assert time.monotonic() - started < 0.8


@pytest.mark.parametrize("name, reason", [
    ("tests.tasks:exit_zero", "exited with code 0 without sending a result"),
    ("tests.tasks:exit_nonzero", "exited with code 3"),
    ("tests.tasks:abort_self", "signal SIGSEGV"),
])
def test_a_child_that_dies_without_a_result_is_an_error_never_success(name, reason):
    outcome = run(name)
    assert outcome.status is Status.ERROR and reason in outcome.error


def test_an_unencodable_result_is_an_error():
    outcome = run("tests.tasks:unencodable_result")
    assert outcome.status is Status.ERROR and "not JSON-encodable" in outcome.error


def test_a_huge_result_is_refused_with_its_size():
    limits = Limits(modules=("tests.tasks",), result_max_bytes=10_000)
    outcome = run("tests.tasks:huge_result", "[50000]", limits=limits)
    assert outcome.status is Status.ERROR and "result too large" in outcome.error


def test_a_result_larger_than_a_pipe_buffer_arrives_whole():
    outcome = run("tests.tasks:huge_result", "[300000]")
    assert outcome.status is Status.SUCCESS and len(outcome.result) == 300002


def test_the_memory_limit_turns_a_memory_hog_into_an_error():
    limits = Limits(modules=("tests.tasks",), memory_mb=256)
    outcome = run("tests.tasks:eat_memory", "[1024]", limits=limits)
    assert outcome.status is Status.ERROR and "MemoryError" in outcome.error


def test_flooding_stdout_does_not_hang_the_job(capfd):
    outcome = run("tests.tasks:flood_output", "[20000]", timeout=5.0)
    assert outcome.status is Status.SUCCESS
    capfd.readouterr()


def test_the_child_holds_only_its_own_pipes_and_stdio():
    r, w = os.pipe()  # stands for the consumer's pipe to the producer
    try:
        outcome = run("tests.tasks:open_fds")
    finally:
        os.close(r)
        os.close(w)
    fds = set(eval(outcome.result)) - {0, 1, 2}
    assert r not in fds and w not in fds
    assert len(fds) <= 3  # job pipe, result pipe, and listdir's own fd


def test_a_prefork_child_waits_for_its_job_and_dies_with_its_parent_group():
    child = Child.fork(LIMITS, resolve)
    assert pid_alive(child.pid)
    outcome = executor.execute(Task(1, 1, "tests.tasks:ok", "[]"), 1.0, LIMITS, resolve, child=child)
    assert outcome.status is Status.SUCCESS
    assert not pid_alive(child.pid)


def test_a_reused_child_runs_up_to_k_jobs():
    limits = Limits(modules=("tests.tasks",), child_reuse=3)
    child = Child.fork(limits, resolve)
    pids = set()
    for i in range(3):
        child.send(Task(i, 1, "tests.tasks:record_run", '["/dev/null"]'))
        reply = None
        while reply is None:
            reply = child.poll_result()
        pids.add(reply[1])
    assert pids == {str(child.pid)}
    eventually(child.exited)  # after K jobs the child leaves on its own
    child.kill()


@pytest.mark.parametrize("name, reason", [
    ("tests.tasks:nan_result", "not JSON-encodable"),
    ("tests.tasks:nul_result", "NUL character"),
])
def test_results_postgres_cannot_store_are_errors_in_the_child(name, reason):
    outcome = run(name)
    assert outcome.status is Status.ERROR and reason in outcome.error


def test_a_traceback_with_a_nul_byte_is_made_storable():
    outcome = run("tests.tasks:nul_error")
    assert "\x00" not in outcome.error and "bad\\x00byte" in outcome.error
