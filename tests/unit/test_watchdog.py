"""The supervisor's watch on the producer's loop, with a fake clock."""

from stagerunner.watchdog import HANG_S, MIN_WAIT_S, Watchdog


def test_holding_tasks_the_limit_is_80_percent_of_the_expiry_else_the_hang_limit():
    dog = Watchdog(expiry_s=3.0)
    dog.alive(now=100.0, held=0)
    assert dog.limit() == HANG_S
    dog.alive(now=100.0, held=2)
    assert dog.limit() == 3.0 * 0.8


def test_the_supervisor_wakes_when_the_limit_runs_out_not_a_tick_later():
    dog = Watchdog(expiry_s=3.0)
    dog.alive(now=100.0, held=1)
    assert dog.wait(now=100.0, longest=1.0) == 1.0  # a heartbeat away: plenty of time
    assert abs(dog.wait(now=101.9, longest=1.0) - 0.5) < 1e-9  # 2.4 s after the last word
    assert dog.wait(now=105.0, longest=1.0) == MIN_WAIT_S  # overdue: look now, never spin at 0


def test_silence_past_the_limit_is_reported_once_then_watched_anew():
    dog = Watchdog(expiry_s=3.0)
    dog.alive(now=100.0, held=1)
    assert dog.silent(now=102.3) is None  # within the limit
    assert dog.silent(now=102.5) == 2.5
    assert dog.silent(now=102.6) is None  # said once; the producer's exit drives the rest
    dog.alive(now=103.0, held=0)
    assert dog.silent(now=112.0) is None and dog.silent(now=113.5) == 10.5
