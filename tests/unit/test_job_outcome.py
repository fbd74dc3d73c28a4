"""How a job's ending becomes its outcome (``executor.Job``), fed through a real pipe with
the reply frames a job child writes; no child process. The case that matters: a node
frozen across a job's deadline must not let the job pass as a success when it thaws."""

import os

import pytest

from stagerunner.child import reply_frame
from stagerunner.executor import ChildHandle, Ending, Job
from stagerunner.protocol import Status, Task

pytestmark = pytest.mark.timeout(10)
STARTED = 1000.0  # monotonic seconds; the deadline is 0.3 s later
TIMEOUT = 0.3


@pytest.fixture
def job():
    job_r, job_w = os.pipe()
    result_r, result_w = os.pipe()
    os.set_blocking(result_r, False)
    child = ChildHandle(pid=os.getpid(), job_w=job_w, result_r=result_r)
    yield Job(Task(7, 2, "tests.tasks:sleepy", "[]"), child, STARTED, STARTED + TIMEOUT,
              TIMEOUT), result_w
    child.close()
    os.close(job_r)
    os.close(result_w)


def replied(job_and_pipe, payload, finished, now):
    job, result_w = job_and_pipe
    os.write(result_w, reply_frame(payload, finished))
    assert job.check([job.child.result_r], now) is Ending.REPLIED
    return job.outcome(Ending.REPLIED, now)


def test_a_result_that_finished_in_time_is_a_success_even_when_read_late(job):
    """The consumer alone was frozen: the job was done at 0.2 s and read at 1.5 s."""
    outcome = replied(job, b'["ok", "42"]', STARTED + 0.2, now=STARTED + 1.5)
    assert (outcome.status, outcome.result) == (Status.SUCCESS, "42")
    assert outcome.runtime_ms == pytest.approx(200)  # the job's time, not our reading's


def test_a_result_that_finished_past_the_deadline_is_a_timeout(job):
    """The whole node was frozen across the deadline; at the thaw the job finished and its
    result reached the consumer before the kill did (chaos seed 994755)."""
    outcome = replied(job, b'["ok", "null"]', STARTED + 1.29, now=STARTED + 1.291)
    assert outcome.status is Status.TIMEOUT and outcome.result is None
    assert outcome.runtime_ms == pytest.approx(1290)
    assert outcome.error.startswith("finished 0.990 s past its deadline of 0.3 s")
    assert "result was discarded" in outcome.error


def test_an_error_that_finished_past_the_deadline_is_a_timeout_too(job):
    outcome = replied(job, b'["error", "Traceback: late"]', STARTED + 0.3, now=STARTED + 0.31)
    assert outcome.status is Status.TIMEOUT and "past its deadline" in outcome.error


def test_a_finish_time_outside_the_watch_is_held_to_it(job):
    """The stamp is the child's word: it is kept between the job's start and its reading."""
    early = replied(job, b'["ok", "1"]', STARTED - 50.0, now=STARTED + 0.1)
    assert early.status is Status.SUCCESS and early.runtime_ms == 0.0
    later = replied(job, b'["ok", "2"]', STARTED + 50.0, now=STARTED + 0.1)
    assert later.status is Status.SUCCESS and later.runtime_ms == pytest.approx(100)


def test_a_reply_without_a_finish_time_is_garbage(job):
    outcome = replied(job, b'["ok", "null"]', float("nan"), now=STARTED + 0.1)
    assert outcome.status is Status.ERROR and "garbage" in outcome.error


def test_an_expired_job_is_a_timeout_killed_at_its_deadline(job):
    outcome = job[0].outcome(Ending.EXPIRED, STARTED + 0.3)
    assert outcome.status is Status.TIMEOUT
    assert outcome.error == "killed at its deadline of 0.3 s"
