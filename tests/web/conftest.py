"""Fixtures of the dashboard tests: the dashboard as a subprocess (``python -m stagerunner
web``) against the test's fresh database, and Debian's headless chromium driven through
chromedriver (never a browser or driver downloaded at run time).

Without /usr/bin/chromium and /usr/bin/chromedriver the browser tests are skipped, except
under CI (the CI environment variable set), where they fail: .ci/run installs them.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import tempfile
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime, timezone
from http.client import HTTPResponse
from pathlib import Path
from typing import Any

import pytest
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from tests.helpers import ROOT, eventually, node_env

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
TOKEN = "test-token-0123456789abcdef"
# The dashboard's DSN carries this password (the shared test server trusts local
# connections, so any password works): no page, header or log line may ever show it.
PASSWORD = "pw-never-shown-7f3a9c"
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--disable-dev-shm-usage", "--window-size=1400,1000"]


def with_password(dsn: str) -> str:
    info = conninfo_to_dict(dsn)
    info["password"] = PASSWORD
    return make_conninfo(**{k: v for k, v in info.items() if v is not None})


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Web:
    url: str
    proc: subprocess.Popen[bytes]
    log_path: Path
    dsn: str

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def request(self, path: str, *, data: dict[str, str] | None = None,
                headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], str]:
        """(status, headers, body) of one request; redirects are not followed."""
        body = None
        if data is not None:
            body = "&".join(f"{urllib.request.quote(k)}={urllib.request.quote(v)}" for k, v in data.items()).encode()
        req = urllib.request.Request(self.url + path, data=body, headers=headers or {},
                                     method="POST" if data is not None else "GET")
        if data is not None:
            req.add_header("Content-Type", "application/x-www-form-urlencoded")
        opener = urllib.request.build_opener(_NoRedirect)
        try:
            response: HTTPResponse = opener.open(req, timeout=20)
        except urllib.error.HTTPError as exc:
            return exc.code, dict(exc.headers.items()), exc.read().decode(errors="replace")
        return response.status, dict(response.headers.items()), response.read().decode(errors="replace")


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None


def web_env(dsn: str, **settings: Any) -> dict[str, str]:
    env = node_env(dsn)
    env.update({f"STAGERUNNER_{k.upper()}": str(v) for k, v in settings.items()})
    return env


@pytest.fixture
def start_web(db: str, tmp_path: Path) -> Iterator[Callable[..., Web]]:
    """Start `python -m stagerunner web` on a free loopback port (token set unless given)."""
    started: list[Web] = []

    def _start(**settings: Any) -> Web:
        settings.setdefault("web_port", free_port())
        settings.setdefault("web_token", TOKEN)
        settings = {k: v for k, v in settings.items() if v is not None}
        dsn = with_password(db)
        log_path = tmp_path / f"web-{len(started)}.log"
        with open(log_path, "wb") as out:
            proc = subprocess.Popen([sys.executable, "-m", "stagerunner", "web"], cwd=ROOT,
                                    env=web_env(dsn, **settings), stdout=out, stderr=subprocess.STDOUT)
        web = Web(f"http://127.0.0.1:{settings['web_port']}", proc, log_path, dsn)
        started.append(web)
        eventually(lambda: _answers(web), timeout=20, interval=0.1)
        return web

    yield _start
    for web in started:
        if web.proc.poll() is None:
            web.proc.send_signal(signal.SIGTERM)
            try:
                web.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                web.proc.kill()
                web.proc.wait()
        log = web.log()
        assert PASSWORD not in log, "the DSN's password reached the dashboard's log"
        assert "event=web.error" not in log, "a page failed:\n" + log[-4000:]


def _answers(web: Web) -> bool:
    if web.proc.poll() is not None:
        raise AssertionError(f"the dashboard exited {web.proc.returncode}:\n{web.log()}")
    try:
        return web.request("/healthz")[0] == 200
    except OSError:
        return False


@pytest.fixture(scope="session")
def chromium() -> Iterator[Any]:
    """One headless chromium for the session (each test clears its cookies)."""
    missing = [p for p in (CHROMIUM, CHROMEDRIVER) if not os.access(p, os.X_OK)]
    if missing:
        message = f"{' and '.join(missing)} missing: apt-get install chromium chromium-driver"
        if os.environ.get("CI"):
            pytest.fail(message + " (.ci/run installs them)")
        pytest.skip(message)
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    profile = tempfile.mkdtemp(prefix="sr-chromium-")
    for flag in [*CHROMIUM_FLAGS, f"--user-data-dir={profile}"]:
        options.add_argument(flag)
    # the driver's path is given, so Selenium Manager never runs (it would download one)
    driver = webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER), options=options)
    driver.set_page_load_timeout(30)
    yield driver
    driver.quit()


@pytest.fixture
def browser(chromium: Any) -> Iterator[Any]:
    # every dashboard is on 127.0.0.1, and cookies ignore the port: clear them all
    chromium.execute_cdp_cmd("Network.clearBrowserCookies", {})
    yield chromium
    chromium.get("about:blank")


def sign_in(browser: Any, web: Web, token: str = TOKEN) -> None:
    from selenium.webdriver.common.by import By

    browser.get(web.url + "/login")
    browser.find_element(By.ID, "token").send_keys(token)
    browser.find_element(By.ID, "sign-in").click()
    eventually(lambda: "sign out" in browser.page_source, timeout=10)


def wait_for(check: Callable[[], Any], timeout: float = 15.0) -> Any:
    """`eventually` for a page: while a form posts or a live refresh swaps a list in, the
    element a check reads may be missing or replaced for a moment; that is "not yet"."""
    from selenium.common.exceptions import NoSuchElementException, StaleElementReferenceException

    def settled() -> Any:
        try:
            return check()
        except (NoSuchElementException, StaleElementReferenceException) as exc:
            raise AssertionError(f"page not settled: {exc.msg}") from None

    return eventually(settled, timeout=timeout, interval=0.2)


_JSON = {"args", "result", "errors", "info"}


_FINISHED = ("success", "error", "timeout", "cancelled")


def insert_row(conn: Any, table: str = "tasks", **fields: Any) -> dict[str, Any]:
    """One row of stagerunner.<table> with exactly these columns (JSON ones given as Python)."""
    import json

    from psycopg.rows import dict_row

    if table == "tasks" and fields.get("status") in _FINISHED:
        fields.setdefault("finished_at", datetime.now(timezone.utc))  # the schema insists
    values = {k: json.dumps(v) if k in _JSON and not isinstance(v, str) else v for k, v in fields.items()}
    cols = list(values)
    marks = ", ".join(f"%({c})s::stagerunner.task_status" if c == "status" else
                      f"%({c})s::jsonb" if c in _JSON else f"%({c})s" for c in cols)
    row = conn.cursor(row_factory=dict_row).execute(
        f"INSERT INTO stagerunner.{table} ({', '.join(cols)}) VALUES ({marks}) RETURNING *", values).fetchone()
    assert row is not None
    return row
