"""The dashboard over plain HTTP: who may act, what start-up refuses, what responses carry."""

from __future__ import annotations

import re
import subprocess
import sys

import pytest

from tests.helpers import ROOT
from tests.web.conftest import PASSWORD, TOKEN, free_port, insert_row, web_env, with_password

pytestmark = [pytest.mark.system, pytest.mark.timeout(60)]


def form_token(web, path: str = "/login", **headers: str) -> tuple[str, dict[str, str]]:
    """The CSRF token of a page and the headers of a browser holding its cookie."""
    status, headers, body = web.request(path, headers=headers)
    assert status == 200
    cookie = re.search(r"sr_csrf=([0-9a-f]+)", headers["Set-Cookie"]).group(1)
    session = {"Cookie": f"sr_csrf={cookie}", "Origin": web.url, "Host": web.url.split("//")[1]}
    return re.search(r'name="csrf" value="([0-9a-f]+)"', body).group(1), session


def signed_in(web) -> dict[str, str]:
    csrf, headers = form_token(web, "/login")
    status, got, _ = web.request("/login", data={"token": TOKEN, "csrf": csrf, "next": "/"}, headers=headers)
    assert status == 303, got
    session = re.search(r"sr_session=([^;]+)", got["Set-Cookie"]).group(1)
    return {**headers, "Cookie": headers["Cookie"] + f"; sr_session={session}"}


def test_an_action_without_the_token_is_refused_and_with_it_done(start_web, conn):
    task_id = insert_row(conn, name="app:x", status="error", attempts=3)["id"]
    web = start_web()
    csrf, browser = form_token(web)
    assert web.request(f"/tasks/{task_id}/retry", data={"csrf": csrf}, headers=browser)[0] == 401
    assert web.request(f"/tasks/{task_id}/retry", data={},
                       headers={"Authorization": "Bearer wrong-token-0123456789"})[0] == 401
    assert conn.execute("SELECT status::text FROM stagerunner.tasks").fetchone()[0] == "error"
    status, _, body = web.request(f"/tasks/{task_id}/retry", data={}, headers={"Authorization": f"Bearer {TOKEN}"})
    assert (status, body) == (200, '{"done": "retried", "n": 1}')
    assert conn.execute("SELECT status::text FROM stagerunner.tasks").fetchone()[0] == "waiting"


def test_a_browser_post_needs_its_csrf_token_and_our_origin(start_web, conn):
    task_id = insert_row(conn, name="app:x", status="error", attempts=3)["id"]
    web = start_web()
    session = signed_in(web)
    other_cookie_token = form_token(web)[0]  # a token for another browser's cookie
    path = f"/tasks/{task_id}/retry"
    assert web.request(path, data={"next": "/"}, headers=session)[0] == 403
    assert web.request(path, data={"csrf": other_cookie_token}, headers=session)[0] == 403
    good = form_token_for(web, session)
    assert web.request(path, data={"csrf": good}, headers={**session, "Origin": "http://evil.example"})[0] == 403
    without_origin = {k: v for k, v in session.items() if k != "Origin"}
    assert web.request(path, data={"csrf": good}, headers=without_origin)[0] == 403
    status, headers, _ = web.request(path, data={"csrf": good, "next": "//evil.example/x"}, headers=session)
    assert status == 303 and headers["Location"] == "/"  # never sent off-site
    assert conn.execute("SELECT status::text FROM stagerunner.tasks").fetchone()[0] == "waiting"


def form_token_for(web, session: dict[str, str]) -> str:
    _, _, body = web.request("/", headers=session)
    return re.search(r'name="csrf" value="([0-9a-f]+)"', body).group(1)


def test_read_only_and_unauthenticated_dashboards_refuse_every_action(start_web, conn):
    task_id = insert_row(conn, name="app:x", status="error", attempts=3)["id"]
    bearer = {"Authorization": f"Bearer {TOKEN}"}
    readonly = start_web(web_readonly="true")
    for path, data in ((f"/tasks/{task_id}/retry", {}), ("/purge", {"older_than": "0"}),
                       ("/queues/pause", {"queue": "default"})):
        status, _, body = readonly.request(path, data=data, headers=bearer)
        assert status == 403 and "read-only" in body
    no_auth = start_web(web_token=None)
    status, _, body = no_auth.request(f"/tasks/{task_id}/retry", data={}, headers=bearer)
    assert status == 403 and "STAGERUNNER_WEB_TOKEN" in body
    assert "view only" in no_auth.request("/")[2] and "<button" not in no_auth.request(f"/tasks/{task_id}")[2]
    assert conn.execute("SELECT status::text FROM stagerunner.tasks").fetchone()[0] == "error"


def test_basic_auth_signs_a_browser_in(start_web, conn):
    import base64

    task_id = insert_row(conn, name="app:x", status="error", attempts=3)["id"]
    web = start_web(web_token=None, web_user="oncall", web_password="correct horse battery")
    status, headers, _ = web.request("/login")
    assert status == 401 and headers["WWW-Authenticate"].startswith("Basic")
    good = "Basic " + base64.b64encode(b"oncall:correct horse battery").decode()
    bad = "Basic " + base64.b64encode(b"oncall:wrong horse battery!").decode()
    csrf, browser = form_token(web, f"/tasks/{task_id}", Authorization=good)
    path = f"/tasks/{task_id}/retry"
    assert web.request(path, data={"csrf": csrf}, headers={**browser, "Authorization": bad})[0] == 401
    assert web.request(path, data={"csrf": csrf}, headers={**browser, "Authorization": good})[0] == 303


def test_a_foreign_host_name_is_refused_on_loopback(start_web):
    web = start_web()
    status, _, body = web.request("/", headers={"Host": f"rebound.example:{web.url.rsplit(':', 1)[1]}"})
    assert status == 421
    assert web.request("/", headers={"Host": "localhost:1234"})[0] == 200


def test_responses_carry_security_headers_and_never_the_dsn(start_web, conn):
    task_id = insert_row(conn, name="app:x", status="error", attempts=3, last_error="boom")["id"]
    web = start_web(task_modules="tests.periodic_tasks")
    for path in ("/", "/tasks", f"/tasks/{task_id}", f"/tasks/{task_id}.json", "/runtimes", "/cron", "/login",
                 "/healthz", "/nope", "/tasks/999999", "/static/live.js", "/static/../app.py"):
        status, headers, body = web.request(path)
        everything = body + repr(headers)
        assert PASSWORD not in everything and "dbname" not in everything and "postgresql://" not in everything
        assert headers["X-Content-Type-Options"] == "nosniff", path
        assert "script-src 'self'" in headers["Content-Security-Policy"], path
        assert status in (200, 404), (path, status)


def test_start_up_refuses_bad_settings_with_exit_2(db):
    def run(**settings: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "stagerunner", "web"], cwd=ROOT, capture_output=True, text=True,
                              env=web_env(with_password(db), **{"web_port": str(free_port()), **settings}), timeout=30)

    exposed = run(web_host="0.0.0.0")
    assert exposed.returncode == 2
    assert "STAGERUNNER_WEB_HOST='0.0.0.0' is not a loopback address" in exposed.stderr
    assert "STAGERUNNER_WEB_TOKEN" in exposed.stderr
    port = run(web_port="80x")
    assert port.returncode == 2 and "STAGERUNNER_WEB_PORT='80x'" in port.stderr
    short = run(web_token="short-secret")
    assert short.returncode == 2 and "STAGERUNNER_WEB_TOKEN='***'" in short.stderr and "short-secret" not in short.stderr
    half = run(web_user="oncall")
    assert half.returncode == 2 and "STAGERUNNER_WEB_PASSWORD" in half.stderr
    for out in (exposed, port, short, half):
        assert PASSWORD not in out.stdout + out.stderr


def test_a_row_with_json_python_will_not_load_breaks_no_page_and_no_command(
        start_web, conn, db):
    """Any role that enqueues can write one (a 5000-digit integer: CPython converts at
    most 4300 digits); it shows as its digits."""
    from tests.helpers import run_cli

    digits = "7" * 5000
    ids = [conn.execute("INSERT INTO stagerunner.tasks (name, args) VALUES ('app:x', %s::jsonb) "
                        "RETURNING id", [args]).fetchone()[0]
           for args in (f"[{digits}, 1]", "[" * 5000 + "]" * 5000)]  # and nested too deeply
    web = start_web()
    for task_id in ids:
        for path in ("/", "/tasks", f"/tasks/{task_id}", f"/tasks/{task_id}.json"):
            status, _, body = web.request(path)
            assert status == 200, (path, status, body[-500:])
        for command in (("show", str(task_id)), ("list",), ("show", "--json", str(task_id))):
            out = run_cli(*command, dsn=db)
            assert out.returncode == 0, (command, out.stderr[-500:])
    assert digits[:100] in web.request(f"/tasks/{ids[0]}.json")[2]
    import stagerunner

    done = conn.execute("INSERT INTO stagerunner.tasks (name, status, finished_at, result) "
                        "VALUES ('app:x', 'success', now(), %s::jsonb) RETURNING id",
                        [f"[{digits}]"]).fetchone()[0]
    assert stagerunner.result(done, timeout=5, dsn=db) == [digits]  # its digits, not a crash
