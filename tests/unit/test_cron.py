from datetime import datetime, timezone

import pytest

from stagerunner import cron


def utc(*args):
    return datetime(*args, tzinfo=timezone.utc)


@pytest.mark.parametrize("expr, after, expected", [
    ("* * * * *", utc(2026, 1, 1, 0, 0, 30), utc(2026, 1, 1, 0, 1)),
    ("*/15 * * * *", utc(2026, 1, 1, 0, 1), utc(2026, 1, 1, 0, 15)),
    ("0 3 * * *", utc(2026, 1, 1, 3, 0), utc(2026, 1, 2, 3, 0)),
    ("30 9 * * 1-5", utc(2026, 11, 28, 12, 0), utc(2026, 11, 30, 9, 30)),  # Saturday -> Monday
    ("0 0 1 * *", utc(2026, 12, 15), utc(2027, 1, 1)),
    ("0 0 29 2 *", utc(2026, 3, 1), utc(2028, 2, 29)),
    ("@hourly", utc(2026, 1, 1, 5, 59), utc(2026, 1, 1, 6, 0)),
    ("0 12 * * 7", utc(2026, 11, 28), utc(2026, 11, 29, 12, 0)),  # 7 is Sunday too
])
def test_next_after(expr, after, expected):
    assert cron.parse(expr).next_after(after) == expected


def test_either_day_field_matches_when_both_are_restricted():
    c = cron.parse("0 0 1 * 1")  # the 1st of the month, or any Monday
    assert c.matches(utc(2026, 11, 30))  # a Monday
    assert c.matches(utc(2026, 12, 1))  # the 1st (a Tuesday)
    assert not c.matches(utc(2026, 12, 2))


def test_last_at_or_before_finds_the_latest_tick():
    assert cron.parse("*/10 * * * *").last_at_or_before(utc(2026, 1, 1, 0, 25)) == utc(2026, 1, 1, 0, 20)


@pytest.mark.parametrize("expr", ["* * * *", "61 * * * *", "* * * * 8", "a * * * *", "*/0 * * * *"])
def test_bad_expressions_are_refused(expr):
    with pytest.raises(ValueError):
        cron.parse(expr)


@pytest.mark.parametrize("expr", ["0 0 30 2 *", "0 0 31 4,6,9,11 *", "0 0 31 2 *"])
def test_an_expression_that_can_never_fire_is_refused_naming_it(expr):
    with pytest.raises(ValueError, match="can never fire") as err:
        cron.parse(expr)
    assert repr(expr) in str(err.value)


def test_a_day_that_exists_in_one_listed_month_is_enough():
    assert cron.parse("0 0 30 2,3 *").next_after(utc(2026, 1, 1)) == utc(2026, 3, 30)
    assert cron.parse("0 0 30 2 1").next_after(utc(2026, 11, 28)) == utc(2027, 2, 1)  # a Monday
