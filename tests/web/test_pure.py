"""The dashboard's pure parts: filters and keyset windows, formatting, charts, the guard."""

from __future__ import annotations

import base64
from datetime import datetime, timezone

import pytest

from stagerunner import config
from stagerunner.web import charts, filters, format
from stagerunner.web.app import safe_next
from stagerunner.web.guard import CSRF_COOKIE, SESSION_COOKIE, Guard, is_loopback

pytestmark = pytest.mark.timeout(10)


def test_filters_parse_the_query_string_and_refuse_what_they_cannot_use():
    f = filters.parse({"status": "failed", "queue": " mail ", "name": "", "q": "x" * 500,
                       "since": "2024-05-01T13:45", "before": "120"})
    assert f.statuses == ("error", "timeout") and f.queue == "mail" and f.name is None
    assert len(f.text or "") == filters.MAX_TEXT and f.before == 120
    assert f.since == datetime(2024, 5, 1, 13, 45, tzinfo=timezone.utc)
    assert "status=failed" in f.query() and "before" not in f.query(before=None)
    for bad in ({"status": "lost"}, {"before": "1 OR 1=1"}, {"until": "tomorrow"}):
        with pytest.raises(filters.BadFilter):
            filters.parse(bad)


def test_like_takes_the_users_wildcards_literally():
    assert filters.like("50%_off\\") == "%50\\%\\_off\\\\%"
    assert filters.like(None) is None


def test_a_window_spans_at_most_the_scan_and_walks_down_to_the_lowest_id():
    f = filters.TaskFilter()
    w = filters.window(f, lo=1, hi=120_000, since_id=None, until_id=None)
    assert w is not None and (w.top, w.floor) == (120_001, 120_001 - filters.SCAN_IDS)
    steps = []
    while w is not None:
        steps.append(w)
        w = w.older()
    assert steps[-1].floor == 1 and steps[-1].exhausted
    assert all(a.floor == b.top for a, b in zip(steps, steps[1:]))
    text = filters.TaskFilter(text="x", before=500)
    w = filters.window(text, lo=1, hi=10_000, since_id=400, until_id=450)
    assert w is not None and (w.top, w.floor, w.lowest) == (450, 400, 400)
    assert filters.window(f, lo=None, hi=None, since_id=None, until_id=None) is None
    assert filters.window(f, lo=10, hi=20, since_id=30, until_id=None) is None


def test_visible_shows_control_and_bidi_characters_as_escapes():
    assert format.visible("a\x07b\x1b[31m\tc\nd\u202ee\x9b") == "a\\x07b\\x1b[31m\tc\nd\\u202ee\\x9b"
    assert format.cut("x" * 10, 4) == "xxxx… (6 more characters not shown)"
    assert format.last_line("Traceback\n  File x\nValueError: boom\n\n") == "ValueError: boom"


def test_charts_hold_only_numbers_and_escaped_labels():
    buckets = charts.fill([{"ago": 0, "success": 3, "failed": 1, "cancelled": 0}, {"ago": 59, "success": 7}], 60)
    assert len(buckets) == 60 and buckets[0].success == 7 and buckets[-1].failed == 1
    svg = str(charts.throughput(buckets, bucket_s=60))
    assert svg.count('class="bar success"') == 2 and "<script" not in svg and "style=" not in svg
    assert 'class="bin killed"' in str(charts.histogram([5, 0, 0, 0, 0, 0, 0, 0, 0, 1, 2]))
    assert charts._nice(0) == 1 and charts._nice(7) == 10 and charts._nice(101) == 200


def settings(**values: str) -> config.Settings:
    return config.load({f"STAGERUNNER_{k.upper()}": v for k, v in values.items()})


def test_the_guard_checks_tokens_sessions_basic_auth_and_csrf():
    guard = Guard(settings(web_token="t" * 20, web_user="ops", web_password="p" * 16))
    assert guard.authenticated({"authorization": "Bearer " + "t" * 20}, {})
    assert not guard.authenticated({"authorization": "Bearer " + "t" * 19}, {})
    basic = base64.b64encode(b"ops:" + b"p" * 16).decode()
    assert guard.authenticated({"authorization": "Basic " + basic}, {})
    assert not guard.authenticated({"authorization": "Basic !!"}, {})
    assert guard.authenticated({}, {SESSION_COOKIE: guard.new_session()})
    assert not guard.authenticated({}, {SESSION_COOKIE: Guard(guard.settings).new_session()})  # another process
    assert not guard.authenticated({}, {SESSION_COOKIE: "9999999999.forged"})
    cookie = "a" * 32
    assert guard.csrf_ok({CSRF_COOKIE: cookie}, guard.csrf_token(cookie))
    assert not guard.csrf_ok({CSRF_COOKIE: "b" * 32}, guard.csrf_token(cookie))
    assert not guard.csrf_ok({}, guard.csrf_token(""))


def test_origin_host_and_bind_rules():
    assert Guard.same_origin({"host": "127.0.0.1:8089", "origin": "http://127.0.0.1:8089"})
    assert Guard.same_origin({"host": "127.0.0.1:8089", "referer": "http://127.0.0.1:8089/tasks"})
    assert not Guard.same_origin({"host": "127.0.0.1:8089", "origin": "http://evil.example"})
    assert not Guard.same_origin({"host": "127.0.0.1:8089", "origin": "null"})
    assert not Guard.same_origin({"host": "127.0.0.1:8089"})
    loopback = Guard(settings())
    assert loopback.host_ok({"host": "localhost:9000"}) and loopback.host_ok({"host": "[::1]:8089"})
    assert not loopback.host_ok({"host": "evil.example:8089"}) and not loopback.host_ok({})
    assert is_loopback("127.0.0.1") and is_loopback("::1") and is_loopback("localhost")
    assert not is_loopback("0.0.0.0") and not is_loopback("192.0.2.7")
    public = Guard(settings(web_host="192.0.2.7", web_token="t" * 20))
    assert public.reads_need_auth() and public.host_ok({"host": "dash.example"})
    assert not loopback.can_act and not Guard(settings(web_token="t" * 20, web_readonly="1")).can_act


def test_safe_next_stays_on_this_site():
    assert safe_next("/tasks?status=error") == "/tasks?status=error"
    for bad in (None, "", "https://evil.example", "//evil.example", "/\\evil.example", "/x\r\nSet-Cookie: a=b"):
        assert safe_next(bad) == "/"
