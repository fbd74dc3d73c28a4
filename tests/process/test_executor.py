"""Job children for real, run by a real consumer in this process: deadlines, group kills,
crashes, results. No database."""

import os
import select
import time

import pytest

import tests.tasks  # noqa: F401  registers the test tasks
from stagerunner import hooks, registry
from stagerunner.child import Limits
from stagerunner.executor import Ending, Job
from stagerunner.forker import Forker
from stagerunner.protocol import Batch, Status, Task, encode
from stagerunner_tools.procfs import alive as pid_alive
from tests.helpers import eventually
from tests.process.inprocess import InProcessConsumer

pytestmark = [pytest.mark.process, pytest.mark.timeout(20)]
LIMITS = Limits(modules=("tests.tasks",))


@pytest.fixture
def consumer():
    with InProcessConsumer(LIMITS) as c:
        yield c


def run(consumer, name, args="[]", timeout=1.0):
    return consumer.run(name, args, timeout)


def test_a_result_comes_back_as_json(consumer):
    outcome = run(consumer, "tests.tasks:add", "[2, 3]")
    assert (outcome.status, outcome.result) == (Status.SUCCESS, "5")


def test_an_exception_ends_in_error_with_its_traceback(consumer):
    outcome = run(consumer, "tests.tasks:boom", '["kaput"]')
    assert outcome.status is Status.ERROR
    assert "Traceback" in outcome.error and "ValueError: kaput" in outcome.error


def test_the_deadline_kills_the_child_and_its_grandchildren(consumer, tmp_path):
    pidfile = tmp_path / "pid"
    started = time.monotonic()
    outcome = run(consumer, "tests.tasks:spawn_grandchild_then_sleep", f'["{pidfile}"]')
    assert outcome.status is Status.TIMEOUT
    assert 1.0 <= time.monotonic() - started < 1.5
    assert 1000 <= outcome.runtime_ms < 1500
    eventually(lambda: not pid_alive(int(pidfile.read_text())))


def test_a_grandchild_that_escaped_the_group_is_killed_too(consumer, tmp_path):
    pidfile = tmp_path / "pid"
    outcome = run(consumer, "tests.tasks:escape_group_then_sleep", f'["{pidfile}"]', timeout=0.5)
    assert outcome.status is Status.TIMEOUT
    eventually(lambda: not pid_alive(int(pidfile.read_text())))


def test_ignoring_sigterm_does_not_stretch_the_deadline(consumer):
    started = time.monotonic()
    assert run(consumer, "tests.tasks:ignore_sigterm", timeout=0.3).status is Status.TIMEOUT
    assert time.monotonic() - started < 0.8


def test_a_child_blocked_in_c_code_is_killed_at_the_deadline(consumer):
    started = time.monotonic()
    assert run(consumer, "tests.tasks:blocked_in_c", timeout=0.3).status is Status.TIMEOUT
    assert time.monotonic() - started < 0.8


@pytest.mark.parametrize("name, reason", [
    ("tests.tasks:exit_zero", "exited with code 0 without sending a result"),
    ("tests.tasks:exit_nonzero", "exited with code 3"),
    ("tests.tasks:abort_self", "signal SIGSEGV"),
])
def test_a_child_that_dies_without_a_result_is_an_error_never_success(consumer, name, reason):
    outcome = run(consumer, name)
    assert outcome.status is Status.ERROR and reason in outcome.error


def test_an_unencodable_result_is_an_error(consumer):
    outcome = run(consumer, "tests.tasks:unencodable_result")
    assert outcome.status is Status.ERROR and "not JSON-encodable" in outcome.error


def test_a_huge_result_is_refused_with_its_size():
    with InProcessConsumer(Limits(modules=("tests.tasks",), result_max_bytes=10_000)) as c:
        outcome = run(c, "tests.tasks:huge_result", "[50000]")
    assert outcome.status is Status.ERROR and "result too large" in outcome.error


def test_a_result_larger_than_a_pipe_buffer_arrives_whole(consumer):
    outcome = run(consumer, "tests.tasks:huge_result", "[300000]")
    assert outcome.status is Status.SUCCESS and len(outcome.result) == 300002


def test_the_memory_limit_turns_a_memory_hog_into_an_error():
    with InProcessConsumer(Limits(modules=("tests.tasks",), memory_mb=256)) as c:
        outcome = run(c, "tests.tasks:eat_memory", "[1024]")
    assert outcome.status is Status.ERROR and "MemoryError" in outcome.error


def test_flooding_stdout_does_not_hang_the_job(consumer, capfd):
    outcome = run(consumer, "tests.tasks:flood_output", "[20000]", timeout=5.0)
    assert outcome.status is Status.SUCCESS
    capfd.readouterr()


def test_the_child_holds_only_its_own_pipes_and_stdio(consumer):
    r, w = os.pipe()  # stands for more of the consumer's own descriptors
    try:
        outcome = run(consumer, "tests.tasks:open_fds")
    finally:
        os.close(r)
        os.close(w)
    fds = set(eval(outcome.result)) - {0, 1, 2}
    assert r not in fds and w not in fds
    assert len(fds) <= 3  # job pipe, result pipe, and listdir's own fd


def test_a_prefork_child_waits_for_its_job_and_is_gone_after_it():
    def resolve(name):
        return registry.resolve(name, LIMITS.modules).func

    forker = Forker.start(LIMITS, resolve)
    try:
        child = forker.take()
        time.sleep(0.2)  # it waits for its job as long as it takes
        assert pid_alive(child.pid)
        job = Job(Task(1, 1, "tests.tasks:ok", "[]"), child, time.monotonic(),
                  time.monotonic() + 1.0, 1.0)
        child.send(job.task)
        ending = None
        while ending is None:
            ready = select.select(job.fds(), [], [], 1.0)[0]
            ending = job.check(ready, time.monotonic())
        assert ending is Ending.REPLIED
        assert job.outcome(ending, time.monotonic()).status is Status.SUCCESS
        forker.kill(child)
        eventually(lambda: not pid_alive(child.pid))
    finally:
        forker.close()


def test_a_reply_waiting_at_the_deadline_wins_over_an_empty_select():
    """A consumer woken past the deadline by a select that came back empty (a signal, a
    thaw) still reads the reply already waiting: it decides the outcome, never a kill."""
    forker = Forker.start(LIMITS, lambda name: registry.resolve(name, LIMITS.modules).func)
    try:
        child = forker.take()
        started = time.monotonic()
        # a deadline no loaded machine misses, and a check long after it
        job = Job(Task(1, 1, "tests.tasks:ok", "[]"), child, started, started + 30.0, 30.0)
        child.send(job.task)
        eventually(lambda: select.select([child.result_r], [], [], 0)[0], timeout=10)
        ending = job.check([], started + 60.0)
        assert ending is Ending.REPLIED
        assert job.outcome(ending, started + 60.0).status is Status.SUCCESS  # stamped in time
        forker.kill(child)
    finally:
        forker.close()


def test_a_reused_child_runs_up_to_k_jobs_then_a_fresh_one_takes_over():
    with InProcessConsumer(Limits(modules=("tests.tasks",), child_reuse=3)) as c:
        pids = [run(c, "tests.tasks:record_run", '["/dev/null"]').result for _ in range(4)]
    assert len(set(pids[:3])) == 1 and pids[3] != pids[0]


@pytest.mark.parametrize("name, reason", [
    ("tests.tasks:nan_result", "not JSON-encodable"),
    ("tests.tasks:nul_result", "NUL character"),
])
def test_results_postgres_cannot_store_are_errors_in_the_child(consumer, name, reason):
    outcome = run(consumer, name)
    assert outcome.status is Status.ERROR and reason in outcome.error


def test_a_traceback_with_a_nul_byte_is_made_storable(consumer):
    outcome = run(consumer, "tests.tasks:nul_error")
    assert "\x00" not in outcome.error and "bad\\x00byte" in outcome.error


def test_a_huge_error_is_cut_in_the_child_and_ends_in_error_not_timeout(consumer):
    started = time.monotonic()
    outcome = run(consumer, "tests.tasks:huge_error", "[60]", timeout=5.0)
    assert outcome.status is Status.ERROR
    assert time.monotonic() - started < 4.0
    assert len(outcome.error) < 70_000
    assert "start of the message" in outcome.error and "end of the message" in outcome.error
    assert "characters cut; the error was 62,9" in outcome.error  # the original size, told


def test_a_job_that_closes_its_result_pipe_ends_in_error_at_once(consumer):
    started = time.monotonic()
    outcome = run(consumer, "tests.tasks:close_result_pipe", "[3]", timeout=5.0)
    assert outcome.status is Status.ERROR and "closed its result pipe" in outcome.error
    assert time.monotonic() - started < 2.0  # not at the deadline, and no spinning meanwhile
    assert run(consumer, "tests.tasks:ok").status is Status.SUCCESS  # a fresh child next


@pytest.mark.parametrize("kind", ["huge_header", "not_json", "not_a_reply", "no_finish_time"])
def test_garbage_in_the_result_pipe_ends_in_error_and_the_consumer_carries_on(consumer, kind):
    outcome = run(consumer, "tests.tasks:garble_result_pipe", f'["{kind}"]', timeout=5.0)
    assert outcome.status is Status.ERROR and "garbage" in outcome.error
    assert run(consumer, "tests.tasks:ok").status is Status.SUCCESS


def test_a_reused_child_whose_pipe_broke_is_not_given_another_job():
    with InProcessConsumer(Limits(modules=("tests.tasks",), child_reuse=5)) as c:
        before = run(c, "tests.tasks:record_run", '["/dev/null"]').result
        assert run(c, "tests.tasks:garble_result_pipe", '["not_json"]', timeout=5.0
                   ).status is Status.ERROR
        after = [run(c, "tests.tasks:record_run", '["/dev/null"]').result for _ in range(2)]
    assert after[0] != before and after[0] == after[1]  # a fresh child, reused from then on


def test_descendants_that_escaped_twice_die_at_the_deadline(consumer, tmp_path):
    pidfile = tmp_path / "pids"
    outcome = run(consumer, "tests.tasks:escape_twice", f'["{pidfile}"]', timeout=1.5)
    assert outcome.status is Status.TIMEOUT
    pids = [int(p) for p in pidfile.read_text().split()]
    assert len(set(pids)) == 2, pids  # the one that escaped, and the one that escaped it
    eventually(lambda: not any(pid_alive(p) for p in pids), timeout=5)


def test_a_reply_stamped_past_its_deadline_is_a_timeout_that_kills_the_reused_child():
    """The consumer is not stepped across the job's deadline (as if it were frozen): the
    job ends meanwhile and its reply waits in the pipe, stamped late. The task is a
    timeout, `on_timeout` hears of it, and the reused child is not kept."""
    heard: list[int] = []

    def hook(ctx):
        heard.append(ctx.id)

    hooks.on_timeout(hook)
    try:
        with InProcessConsumer(Limits(modules=("tests.tasks",), child_reuse=5)) as c:
            first = run(c, "tests.tasks:record_run", '["/dev/null"]').result
            c.pipe.send_bytes(encode(Batch((Task(2, 1, "tests.tasks:sleep_for", "[0.2]",
                                                 0.1),))))
            while not c.consumer.queue:
                c.consumer.step(time.monotonic())
            c.consumer._start_next(time.monotonic())  # started; its deadline is not watched
            child = c.consumer.job.child
            eventually(lambda: select.select([child.result_r], [], [], 0)[0], timeout=5)
            time.sleep(0.05)  # well past its deadline, unwatched
            outcome = c.next_message()
            assert outcome.status is Status.TIMEOUT, outcome
            assert "past its deadline of 0.1 s" in outcome.error, outcome.error
            assert 200 <= outcome.runtime_ms < 1000
            assert heard == [2]
            eventually(lambda: not pid_alive(child.pid))
            after = c.run("tests.tasks:record_run", '["/dev/null"]', task_id=3).result
            assert after != first  # a fresh child
    finally:
        hooks._HOOKS["timeout"].remove(hook)


def _growing(path, seconds=0.3):
    before = path.stat().st_size
    time.sleep(seconds)
    return path.stat().st_size > before


def test_a_reused_child_whose_job_left_a_thread_running_is_replaced_and_the_thread_dies(
        tmp_path):
    """What a job leaves running must not run on past its end in a child that lives on
    for the next jobs: the child says so with its reply and is replaced."""
    beats = tmp_path / "beats"
    with InProcessConsumer(Limits(modules=("tests.tasks",), child_reuse=5)) as c:
        first = run(c, "tests.tasks:leave_thread", f'["{beats}"]').result
        eventually(lambda: not pid_alive(int(first)), timeout=5)
        assert beats.exists() and not _growing(beats)  # the thread died with its child
        after = [run(c, "tests.tasks:record_run", '["/dev/null"]').result for _ in range(2)]
    assert after[0] != first and after[0] == after[1]  # a fresh child, reused from then on


def test_a_reused_child_whose_job_left_a_process_running_is_replaced_and_the_process_dies(
        tmp_path):
    pidfile = tmp_path / "pid"
    with InProcessConsumer(Limits(modules=("tests.tasks",), child_reuse=5)) as c:
        first = run(c, "tests.tasks:leave_process", f'["{pidfile}"]').result
        eventually(lambda: not pid_alive(int(pidfile.read_text())), timeout=5)
        assert run(c, "tests.tasks:record_run", '["/dev/null"]').result != first
