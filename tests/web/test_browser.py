"""The dashboard in a real browser (headless Debian chromium): what an on-call engineer sees
and clicks, against a database holding real tasks, some written by a real node."""

from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import Select

from tests.web.conftest import PASSWORD, TOKEN, insert_row, sign_in, wait_for

pytestmark = [pytest.mark.system, pytest.mark.timeout(120)]


def text(browser: Any, css: str = "body") -> str:
    return str(browser.find_element(By.CSS_SELECTOR, css).text)


def button(browser: Any, label: str) -> Any:
    return browser.find_element(By.XPATH, f"//button[normalize-space()='{label}']")


def status_of(conn: Any, task_id: int) -> str:
    return str(conn.execute("SELECT status::text FROM stagerunner.tasks WHERE id = %s", [task_id]).fetchone()[0])


def ago(**delta: float) -> datetime:
    return datetime.now(timezone.utc) - timedelta(**delta)


# The journey of the issue ---------------------------------------------------------------------

def test_find_a_failed_task_read_its_traceback_retry_it_and_watch_it_succeed(
        browser, start_web, start_node, conn, tmp_path: Path):
    flag = tmp_path / "fix-deployed"
    node = start_node()
    for i in range(5):  # noise the filter has to get past
        insert_row(conn, name="tests.tasks:add", args=[i, i])
    failing = insert_row(conn, name="tests.tasks:fails_until_fixed", args={"flag": str(flag)},
                         max_attempts=1)["id"]
    wait_for(lambda: status_of(conn, failing) == "error", timeout=30)
    web = start_web()
    sign_in(browser, web)

    # find it: failed tasks whose name contains "fails_until"
    browser.get(web.url + "/tasks")
    Select(browser.find_element(By.ID, "f-status")).select_by_value("failed")
    browser.find_element(By.ID, "f-name").send_keys("fails_until")
    browser.find_element(By.ID, "apply").click()
    wait_for(lambda: "status=failed" in browser.current_url)
    rows = browser.find_elements(By.CSS_SELECTOR, "#list tbody tr")
    assert len(rows) == 1 and "tests.tasks:fails_until_fixed" in rows[0].text
    browser.find_element(By.LINK_TEXT, str(failing)).click()

    # read its traceback
    wait_for(lambda: browser.current_url.endswith(f"/tasks/{failing}"))
    traceback = text(browser, "#attempts pre.traceback")
    assert "Traceback (most recent call last)" in traceback
    assert "RuntimeError: the fix is not deployed yet" in traceback
    assert "error" in text(browser, "#task-head h1")

    # deploy the fix, retry, and watch it succeed without reloading the page
    flag.write_text("")
    button(browser, "Retry").click()
    wait_for(lambda: "1 task(s) sent back to waiting." in text(browser, ".flash"))
    browser.execute_script("window.__same_page = true")
    wait_for(lambda: "success" in text(browser, "#task-head h1"), timeout=30)
    assert browser.execute_script("return window.__same_page") is True, "the page was reloaded"
    assert "fixed" in text(browser, "#result")
    assert status_of(conn, failing) == "success"
    assert node.proc.poll() is None


def test_cancelling_a_running_task_kills_its_job(browser, start_web, start_node, conn):
    start_node(job_timeout=30, max_job_timeout=60)
    task_id = insert_row(conn, name="tests.tasks:sleep_forever", timeout_s=50)["id"]
    wait_for(lambda: status_of(conn, task_id) == "running", timeout=30)
    web = start_web()
    sign_in(browser, web)
    browser.get(f"{web.url}/tasks/{task_id}")
    assert "running" in text(browser, "#task-head h1")
    button(browser, "Cancel").click()
    alert = wait_for(lambda: browser.switch_to.alert)
    assert "killed" in alert.text
    alert.accept()
    wait_for(lambda: "cancelled" in text(browser, "#task-head h1"), timeout=30)
    assert status_of(conn, task_id) == "cancelled"


# Pages ------------------------------------------------------------------------------------------

def test_overview_shows_queues_nodes_the_chart_and_recent_failures(browser, start_web, conn):
    for i in range(6):
        insert_row(conn, name="app:ok", status="success", finished_at=ago(minutes=i * 7), attempts=1,
                   claimed_by="n/1", claimed_at=ago(minutes=i * 7, seconds=1), runtime_ms=20.0, deadline_s=1.0)
    failed = insert_row(conn, name="app:broken", queue="mail", status="timeout", attempts=3,
                        finished_at=ago(minutes=3), claimed_by="n/1", runtime_ms=1004.5, deadline_s=1.0,
                        last_error="killed at its deadline of 1 s")["id"]
    insert_row(conn, name="app:later", queue="mail", run_at=ago(minutes=-30))
    insert_row(conn, name="app:due", queue="mail", run_at=ago(minutes=4))
    insert_row(conn, "nodes", owner="box-1/77-abc", node="box-1", host="box-1.internal", pid=77,
               queues="default,mail", consumers=8, expires_at=ago(seconds=-30),
               info={"forkers_alive": 8, "jobs_running": 3, "killed_at_deadline": 12, "overshoot_ms_p99": 2.5})
    insert_row(conn, "queues", name="mail", paused=True, paused_at=ago(minutes=2))
    web = start_web()
    browser.get(web.url + "/")
    assert browser.find_elements(By.CSS_SELECTOR, "#throughput svg rect.bar.success")
    assert browser.find_elements(By.CSS_SELECTOR, "#throughput svg rect.bar.failed")
    queues = text(browser, "#queues")
    assert "paused" in queues and "mail" in queues
    mail = browser.find_element(By.XPATH, "//section[@id='queues']//tr[td/a[text()='mail']]").text
    assert mail.split()[1:4] == ["1", "1", "0"]  # waiting due, scheduled, running
    assert "4m" in mail  # the oldest due wait
    nodes = text(browser, "#nodes")
    assert "box-1" in nodes and "killed_at_deadline 12" in nodes and "forkers_alive 8" in nodes
    assert "consumers" in nodes and " 8 " in f" {nodes} "
    assert str(failed) in text(browser, "#failures") and "killed at its deadline" in text(browser, "#failures")
    assert "1" in text(browser, ".stat.alarm .value")


def test_task_list_filters_pages_and_finds_by_id_or_text(browser, start_web, conn):
    ids = [insert_row(conn, name=f"app:job_{i % 3}", queue="q" + str(i % 2), args={"order": f"ord-{i}"},
                      created_at=ago(hours=120 - i))["id"] for i in range(120)]
    insert_row(conn, name="app:job_0", status="error", attempts=3, last_error="Traceback\nKeyError: 'needle'",
               finished_at=ago(minutes=1))
    web = start_web()
    browser.get(web.url + "/tasks")
    first = [int(r.text) for r in browser.find_elements(By.CSS_SELECTOR, "#list tbody td:first-child a")]
    assert len(first) == 50 and first == sorted(first, reverse=True)
    browser.find_element(By.ID, "older").click()
    second = [int(r.text) for r in browser.find_elements(By.CSS_SELECTOR, "#list tbody td:first-child a")]
    assert len(second) == 50 and max(second) < min(first)

    def shown(query: str) -> list[int]:
        browser.get(f"{web.url}/tasks?{query}")
        return [int(r.text) for r in browser.find_elements(By.CSS_SELECTOR, "#list tbody td:first-child a")]

    assert shown("queue=q1&name=job_2") == [i for i in reversed(ids) if (i - ids[0]) % 2 == 1 and (i - ids[0]) % 3 == 2][:50]
    assert shown("q=ord-7") == [ids[79], ids[78], ids[77], ids[76], ids[75], ids[74], ids[73], ids[72], ids[71], ids[70],
                                ids[7]]
    assert len(shown("status=error&q=needle")) == 1
    since, until = ago(hours=100).strftime("%Y-%m-%dT%H:%M"), ago(hours=90).strftime("%Y-%m-%dT%H:%M")
    expected = [r[0] for r in conn.execute(
        "SELECT id FROM stagerunner.tasks WHERE created_at >= %s::timestamp AT TIME ZONE 'UTC' "
        "AND created_at < %s::timestamp AT TIME ZONE 'UTC' ORDER BY id DESC", [since, until])]
    assert 9 <= len(expected) <= 11 and shown(f"since={since}&until={until}") == expected
    browser.get(f"{web.url}/tasks?q=%23{ids[3]}")  # "#id" in the search box opens the task
    assert browser.current_url.endswith(f"/tasks/{ids[3]}")
    browser.get(f"{web.url}/tasks?since=yesterday")
    assert "must be a date and time" in text(browser, ".bad")


def test_runtime_view_flags_a_task_that_keeps_hitting_its_deadline(browser, start_web, conn):
    def run(name: str, status: str, runtime: float) -> None:
        insert_row(conn, name=name, status=status, attempts=1, claimed_by="n/1", claimed_at=ago(minutes=5),
                   finished_at=ago(minutes=4), runtime_ms=runtime, deadline_s=2.0)

    for i in range(40):
        run("app:quick", "success", 10 + i)
    for i in range(10):
        run("app:slow_import", "success" if i < 6 else "timeout", 1900 if i < 6 else 2003.5)
    insert_row(conn, name="app:slow_import", status="error", attempts=1, lost=2, claimed_by="n/1",
               claimed_at=ago(minutes=3), finished_at=ago(minutes=2), runtime_ms=5.0, deadline_s=2.0)
    web = start_web()
    browser.get(web.url + "/runtimes")
    rows = browser.find_elements(By.CSS_SELECTOR, "#runtimes tbody tr")
    assert "app:slow_import" in rows[0].text, "the task living at its deadline must come first"
    assert "hot" in rows[0].get_attribute("class") and "hot" not in (rows[1].get_attribute("class") or "")
    cells = rows[0].find_elements(By.TAG_NAME, "td")
    assert [c.text for c in cells[1:7]] == ["11", "6", "1", "4", "2", "6"]  # runs … lost, near deadline
    assert cells[13].text == "3.50 ms"  # overshoot p99 of the kills
    assert rows[0].find_elements(By.CSS_SELECTOR, "svg rect.bin.killed")


def test_cron_page_lists_each_periodic_task_with_its_next_fire_times(browser, start_web, conn):
    insert_row(conn, "periodic", name="tests.every_minute", last_tick=ago(minutes=1))
    last = insert_row(conn, name="tests.every_minute", status="success", attempts=1, finished_at=ago(seconds=50))
    web = start_web(task_modules="tests.periodic_tasks")
    browser.get(web.url + "/cron")
    row = browser.find_element(By.XPATH, "//div[@id='cron']//tr[td[text()='tests.every_minute']]")
    assert "* * * * *" in row.text and f"#{last['id']}" in row.text and "success" in row.text
    fires = [line for line in row.find_elements(By.TAG_NAME, "td")[3].text.splitlines()]
    assert len(fires) == 5
    times = [datetime.strptime(f.split(" (")[0], "%Y-%m-%d %H:%M") for f in fires]
    assert all(b - a == timedelta(minutes=1) for a, b in zip(times, times[1:]))


def test_pause_resume_purge_and_retry_all_matching_from_the_browser(browser, start_web, conn):
    insert_row(conn, name="app:a", queue="mail")
    old = insert_row(conn, name="app:a", status="success", attempts=1, finished_at=ago(days=3))["id"]
    failed = [insert_row(conn, name="app:flaky", status=s, attempts=3, finished_at=ago(minutes=1))["id"]
              for s in ("error", "timeout", "error")]
    other = insert_row(conn, name="app:other", status="error", attempts=3, finished_at=ago(minutes=1))["id"]
    web = start_web()
    sign_in(browser, web)
    browser.get(web.url + "/")
    row = "//section[@id='queues']//tr[td/a[text()='mail']]"
    browser.find_element(By.XPATH, row + "//button[text()='Pause']").click()
    browser.switch_to.alert.accept()
    wait_for(lambda: "paused" in browser.find_element(By.XPATH, row).text)
    assert conn.execute("SELECT paused FROM stagerunner.queues WHERE name = 'mail'").fetchone()[0] is True
    browser.find_element(By.XPATH, row + "//button[text()='Resume']").click()
    wait_for(lambda: "Queue resumed." in text(browser, ".flash"))
    assert conn.execute("SELECT paused FROM stagerunner.queues WHERE name = 'mail'").fetchone()[0] is False

    browser.get(web.url + "/tasks?status=failed&name=flaky")
    button(browser, "Retry all failed tasks that match").click()
    browser.switch_to.alert.accept()
    wait_for(lambda: "3 task(s) sent back to waiting." in text(browser, ".flash"))
    assert [status_of(conn, i) for i in failed] == ["waiting"] * 3 and status_of(conn, other) == "error"

    status, _, _ = web.request("/purge", data={"older_than": "2d"}, headers={"Authorization": f"Bearer {TOKEN}"})
    assert status == 200
    assert conn.execute("SELECT count(*) FROM stagerunner.tasks WHERE id = %s", [old]).fetchone()[0] == 0


def test_counts_and_lists_refresh_without_a_reload(browser, start_web, conn):
    web = start_web()
    browser.get(web.url + "/")
    browser.execute_script("window.__same_page = true")
    assert text(browser, "#cards .stat .value") == "0"
    for _ in range(3):
        insert_row(conn, name="app:new")
    wait_for(lambda: text(browser, "#cards .stat .value") == "3", timeout=20)
    assert "updated" in text(browser, "#live-status")
    browser.get(web.url + "/tasks")
    browser.execute_script("window.__same_page = true")
    newest = insert_row(conn, name="app:newest")["id"]
    wait_for(lambda: str(newest) in text(browser, "#list"), timeout=20)
    assert browser.execute_script("return window.__same_page") is True


def test_read_only_dashboard_shows_no_action_buttons(browser, start_web, conn):
    task_id = insert_row(conn, name="app:x", status="error", attempts=3, finished_at=ago(minutes=1))["id"]
    web = start_web(web_readonly="true")
    sign_in(browser, web)
    for path in ("/", f"/tasks/{task_id}", "/tasks?status=failed"):
        browser.get(web.url + path)
        assert not browser.find_elements(By.CSS_SELECTOR, "main form[method=post] button")
        assert "read-only" in text(browser, "header")


# Hostile payloads ---------------------------------------------------------------------------

SCRIPT = "<script>window.__pwned=1</script>"
BREAKOUT = '"><img src=x onerror="window.__pwned=1">'
SINGLE = "'><svg onload='window.__pwned=1'>"
CONTROL = "bell\x07 esc\x1b[31m rtl\u202eevil"
BIG = "A" * (1 << 20)


def hostile_rows(conn: Any) -> dict[str, int]:
    owner = SCRIPT + "/1"
    insert_row(conn, "nodes", owner=owner, node=BREAKOUT, host=SCRIPT, pid=1, queues=BREAKOUT, consumers=2,
               info={SCRIPT: BREAKOUT, "version": SINGLE, "n": [SCRIPT]})
    insert_row(conn, "queues", name=BREAKOUT, paused=True, paused_at=ago(minutes=1))
    insert_row(conn, "periodic", name=SCRIPT, last_tick=ago(minutes=1))
    failed = insert_row(conn, name=(SCRIPT + BREAKOUT)[:255], queue=BREAKOUT, status="error", attempts=1,
                        args={"a": SCRIPT, "b": BREAKOUT, "c": SINGLE, "d": CONTROL},
                        result={"r": SCRIPT}, unique_key=BREAKOUT, claimed_by=owner, consumer=1,
                        claimed_at=ago(minutes=2), finished_at=ago(minutes=1), runtime_ms=5.0, deadline_s=1.0,
                        last_error=f"Traceback (most recent call last):\n{SCRIPT}\n{BREAKOUT}\n{CONTROL}",
                        errors=[{"attempt": 1, "status": BREAKOUT, "error": SCRIPT + CONTROL, "at": BREAKOUT,
                                 "runtime_ms": "x"}, SCRIPT, {"status": "timeout", "error": {"e": SCRIPT}}])
    big = insert_row(conn, name="app:big", status="timeout", attempts=1, args={"big": BIG[:-64]}, last_error=BIG,
                     errors=[{"attempt": 1, "status": "timeout", "error": BIG}], claimed_by=owner,
                     finished_at=ago(minutes=1), runtime_ms=1003.0, deadline_s=1.0)
    return {"failed": failed["id"], "big": big["id"]}


def test_hostile_payloads_are_shown_literally_and_never_run(browser, start_web, conn):
    ids = hostile_rows(conn)
    web = start_web(task_modules="tests.periodic_tasks")
    sign_in(browser, web)
    quoted = json.dumps  # the payloads as they appear inside shown JSON
    pages = {
        "/": [BREAKOUT, SCRIPT],
        "/tasks": [SCRIPT[:40]],
        f"/tasks/{ids['failed']}": [SCRIPT + BREAKOUT, quoted(SCRIPT), quoted(BREAKOUT)[1:-1], "\\x07", "\\u202e"],
        f"/tasks/{ids['big']}": ["more characters not shown"],
        "/runtimes": [SCRIPT[:40]],
        "/cron": [SCRIPT],
        "/tasks?q=" + _q(SCRIPT): [],
        "/tasks?name=" + _q(BREAKOUT) + "&queue=" + _q(SINGLE): [],
        "/tasks?status=" + _q(BREAKOUT): ["unknown status"],
        "/login?next=" + _q("/" + BREAKOUT): [],
        "/nope" + _q(SCRIPT): ["Not found"],
    }
    for path, shown in pages.items():
        browser.get(web.url + path)
        wait_for(lambda: browser.execute_script("return document.readyState") == "complete")
        body = text(browser)
        for literal in shown:
            assert literal in body, f"{path}: {literal!r} is not shown as text"
        _assert_inert(browser, web, path)
    # the filter values went back into the form's inputs, whole, as values
    browser.get(web.url + "/tasks?name=" + _q(BREAKOUT) + "&q=" + _q(SINGLE))
    assert browser.find_element(By.ID, "f-name").get_attribute("value") == BREAKOUT
    assert browser.find_element(By.ID, "f-q").get_attribute("value") == SINGLE
    # and after a few live refreshes of the detail page, still nothing ran
    browser.get(f"{web.url}/tasks/{ids['failed']}")
    wait_for(lambda: "updated" in text(browser, "#live-status"), timeout=20)
    _assert_inert(browser, web, "live refresh")


def _q(value: str) -> str:
    from urllib.parse import quote

    return quote(value, safe="")


def _assert_inert(browser: Any, web: Any, where: str) -> None:
    assert browser.execute_script("return typeof window.__pwned") == "undefined", f"{where}: a payload ran"
    scripts = [s.get_attribute("src") for s in browser.find_elements(By.TAG_NAME, "script")]
    assert scripts == [web.url + "/static/live.js"], f"{where}: foreign script elements {scripts}"
    assert not browser.find_elements(By.CSS_SELECTOR, "img, main svg[onload], [onerror], [onload]"), where
    source = browser.page_source
    assert PASSWORD not in source, f"{where}: the DSN's password is on the page"
    assert len(source) < 400_000, f"{where}: a 1 MB value must be cut on the page"
