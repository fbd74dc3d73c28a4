import pytest

from stagerunner.completer import QUARANTINE_KILLS, decide
from stagerunner.retry import DEFAULT
from stagerunner.protocol import Outcome, Status


def outcome(status, attempt=1, **kw):
    return Outcome(task_id=1, attempt=attempt, status=status, runtime_ms=3.0, **kw)


def test_success_is_final_and_keeps_the_result():
    f = decide(outcome(Status.SUCCESS, result="42"), lost=0, max_attempts=3)
    assert (f.status, f.result, f.lost) == (Status.SUCCESS, "42", 0)


@pytest.mark.parametrize("status", [Status.ERROR, Status.TIMEOUT])
def test_a_failed_attempt_is_retried_with_backoff_while_attempts_remain(status):
    f = decide(outcome(status, attempt=2, error="boom"), lost=0, max_attempts=3)
    assert f.status == Status.WAITING and f.reported == status
    assert 2.0 * 0.8 <= f.delay_s <= 2.0 * 1.2  # the default jitter: +/-20 %
    assert f.error == "boom"


@pytest.mark.parametrize("status", [Status.ERROR, Status.TIMEOUT])
def test_the_last_attempt_keeps_its_final_status(status):
    f = decide(outcome(status, attempt=3, error="boom"), lost=0, max_attempts=3)
    assert f.status == status and f.error == "boom"


def test_lost_runs_do_not_spend_the_retry_budget():
    # attempt 3 of a task that was lost twice has failed only once
    f = decide(outcome(Status.ERROR, attempt=3, error="boom"), lost=2, max_attempts=2)
    assert f.status == Status.WAITING


def test_a_final_outcome_is_never_retried():
    f = decide(outcome(Status.ERROR, error="unknown task", final=True), lost=0, max_attempts=5)
    assert f.status == Status.ERROR


def test_a_run_lost_with_its_consumer_counts_against_the_task_until_quarantine():
    died = outcome(Status.ERROR, error="consumer died", lost=True, suspect=True)
    f = decide(died, lost=0, max_attempts=3)
    assert (f.status, f.lost, f.kills, f.reported) == (Status.WAITING, 1, 1, "lost")
    assert 0.8 <= f.delay_s <= 1.2
    f = decide(died, lost=5, kills=QUARANTINE_KILLS - 1, max_attempts=3)
    assert f.status == Status.ERROR and "quarantined" in (f.error or "") and f.kills == 1


def test_runs_lost_with_their_node_or_producer_never_count_against_the_task():
    rescued = outcome(Status.ERROR, error="node died", lost=True)
    for lost in (0, 3, 50):
        f = decide(rescued, lost=lost, kills=QUARANTINE_KILLS - 1, max_attempts=1)
        assert (f.status, f.lost, f.kills, f.delay_s) == (Status.WAITING, 1, 0, 0.0)


def test_cancelled_is_final():
    assert decide(outcome(Status.CANCELLED), lost=0, max_attempts=3).status == Status.CANCELLED


def test_backoff_doubles_and_is_capped():
    assert [DEFAULT.delay(n, rand=lambda: 0.5) for n in (1, 2, 3, 4)] == [1.0, 2.0, 4.0, 8.0]
    assert DEFAULT.delay(50, rand=lambda: 1.0) == DEFAULT.max_s


def test_an_outcome_cannot_report_waiting():
    with pytest.raises(ValueError):
        decide(outcome(Status.WAITING), lost=0, max_attempts=3)
