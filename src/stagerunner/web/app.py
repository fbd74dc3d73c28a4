"""The dashboard as a function from a request to a response: routing, the guard's checks,
rendering. No sockets here (``server`` speaks HTTP), so bin/bench and the tests can call
``Dashboard.handle`` directly.

    GET  /  /tasks  /tasks/ID  /tasks/ID.json  /runtimes  /cron  /login  /healthz  /static/…
    POST /tasks/ID/retry  /tasks/ID/cancel  /tasks/retry-failed  /queues/pause  /queues/resume
         /purge  /login  /logout
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from datetime import datetime, timezone
from importlib import resources
from typing import Any
from urllib.parse import quote

import jinja2
import psycopg

from stagerunner import registry
from stagerunner.config import Settings
from stagerunner.web import actions, format, views
from stagerunner.web.guard import CSRF_COOKIE, SESSION_COOKIE, SESSION_S, Guard, new_csrf_cookie
from stagerunner.web.queries import Conn

log = logging.getLogger(__name__)

FLASH_COOKIE = "sr_flash"
STATIC = {"dashboard.css": "text/css; charset=utf-8", "live.js": "text/javascript; charset=utf-8"}
# No inline script or style can run, whatever a page contains; nothing is fetched elsewhere.
SECURITY_HEADERS = [
    ("Content-Security-Policy", "default-src 'none'; script-src 'self'; style-src 'self'; "
                                "img-src 'self' data:; connect-src 'self'; form-action 'self'; "
                                "frame-ancestors 'none'; base-uri 'none'"),
    ("X-Content-Type-Options", "nosniff"),
    ("X-Frame-Options", "DENY"),
    ("Referrer-Policy", "same-origin"),
]
REFRESH_MS = {"overview.html": 3000, "tasks.html": 3000, "task.html": 2000, "runtimes.html": 15000,
              "cron.html": 30000}
_TASK = re.compile(r"^/tasks/(\d{1,18})$")
_TASK_JSON = re.compile(r"^/tasks/(\d{1,18})\.json$")
_TASK_ACTION = re.compile(r"^/tasks/(\d{1,18})/(retry|cancel)$")


@dataclass(frozen=True)
class Request:
    method: str
    path: str
    query: str = ""  # the raw query string
    args: dict[str, str] = field(default_factory=dict)  # its values (the first of each name)
    form: dict[str, str] = field(default_factory=dict)
    headers: dict[str, str] = field(default_factory=dict)  # lower-case names
    cookies: dict[str, str] = field(default_factory=dict)

    @property
    def live(self) -> bool:
        """A refresh by live.js (it swaps parts of the page; no flash is consumed)."""
        return self.headers.get("x-live") == "1"

    def target(self) -> str:
        """This request's path and query, as a local URL."""
        return self.path + (f"?{self.query}" if self.query else "")


@dataclass
class Response:
    status: int
    body: bytes = b""
    content_type: str = "text/html; charset=utf-8"
    headers: list[tuple[str, str]] = field(default_factory=list)


class Denied(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


class Dashboard:
    def __init__(self, settings: Settings, connection: Callable[[], AbstractContextManager[Conn]],
                 guard: Guard | None = None) -> None:
        self.settings = settings
        self.connection = connection
        self.guard = guard or Guard(settings)
        self.templates = jinja2.Environment(
            loader=jinja2.PackageLoader("stagerunner.web", "templates"),
            autoescape=True, undefined=jinja2.StrictUndefined, trim_blocks=True, lstrip_blocks=True)
        self.templates.filters.update(format.FILTERS)
        self._specs: tuple[list[registry.Spec], str | None] | None = None

    def handle(self, req: Request) -> Response:
        try:
            response = self._route(req)
        except views.Redirect as exc:
            response = redirect(exc.location)
        except views.NotFound:
            response = self._error(req, 404, "Not found", "There is no such page or task.")
        except Denied as exc:
            response = self._error(req, exc.status, "Not allowed", str(exc))
        except psycopg.OperationalError:
            log.warning("database unavailable", extra={"event": "web.db_unavailable", "path": req.path})
            response = self._error(req, 503, "Database unavailable",
                                   "The database did not answer in time. This page retries by itself.")
        except Exception:
            log.exception("page failed", extra={"event": "web.error", "path": req.path})
            response = self._error(req, 500, "Something went wrong",
                                   "The page could not be built; the dashboard's log says why.")
        response.headers.extend(SECURITY_HEADERS)
        return response

    # Routing -------------------------------------------------------------------------------

    def _route(self, req: Request) -> Response:
        if not self.guard.host_ok(req.headers):
            raise Denied(421, "This dashboard answers to localhost or 127.0.0.1 only.")
        if req.path.startswith("/static/"):
            return self._static(req.path.removeprefix("/static/"))
        if req.method == "GET":
            return self._get(req)
        if req.method == "POST":
            return self._post(req)
        raise Denied(405, "Only GET and POST are served.")

    def _get(self, req: Request) -> Response:
        if req.path == "/login":
            return self._login_page(req)
        if self.guard.reads_need_auth() and not self._signed_in(req):
            return redirect("/login?next=" + quote(req.target(), safe="/"))
        if req.path == "/healthz":
            with self.connection() as conn:
                views.queries.id_bounds(conn)
            return Response(200, b"ok\n", "text/plain; charset=utf-8")
        if m := _TASK_JSON.match(req.path):
            with self.connection() as conn:
                body = views.task_json(conn, int(m.group(1)))
            return Response(200, body.encode(), "application/json",
                            [("Cache-Control", "no-store")])
        return self._render(req, *self._page(req))

    def _page(self, req: Request) -> views.Page:
        with self.connection() as conn:
            if req.path == "/":
                return views.overview(conn, req.args, self.settings)
            if req.path == "/tasks":
                return views.tasks(conn, req.args, self.settings)
            if m := _TASK.match(req.path):
                return views.task(conn, int(m.group(1)), self.settings)
            if req.path == "/runtimes":
                return views.runtimes(conn, req.args, self.settings)
            if req.path == "/cron":
                specs, error = self._periodic_specs()
                return views.cron_page(conn, specs, error)
        raise views.NotFound(req.path)

    def _post(self, req: Request) -> Response:
        if req.path in ("/login", "/logout"):
            self._check_browser_post(req)
            return self._login(req) if req.path == "/login" else self._logout()
        self._check_action(req)
        done = self._act(req)
        if self.guard.bearer(req.headers):  # a script: it wants the outcome, not a page
            return Response(200, json.dumps({"done": done.code, "n": done.n}).encode(), "application/json")
        response = redirect(safe_next(req.form.get("next")))
        response.headers.append(("Set-Cookie", cookie(FLASH_COOKIE, f"{done.code}.{done.n}", max_age=60)))
        return response

    def _act(self, req: Request) -> actions.Done:
        with self.connection() as conn:
            if m := _TASK_ACTION.match(req.path):
                task_id = int(m.group(1))
                return actions.retry(conn, task_id) if m.group(2) == "retry" else actions.cancel(conn, task_id)
            if req.path == "/tasks/retry-failed":
                return actions.retry_matching(conn, req.form)
            if req.path in ("/queues/pause", "/queues/resume") and req.form.get("queue"):
                return actions.pause(conn, req.form["queue"], paused=req.path == "/queues/pause")
            if req.path == "/purge":
                return actions.purge(conn, req.form.get("older_than", ""))
        raise views.NotFound(req.path)

    # Who may act -----------------------------------------------------------------------------

    def _signed_in(self, req: Request) -> bool:
        return self.guard.authenticated(req.headers, req.cookies)

    def _check_action(self, req: Request) -> None:
        if self.settings.web_readonly:
            raise Denied(403, "This dashboard is read-only (STAGERUNNER_WEB_READONLY).")
        if not self.guard.can_act:
            raise Denied(403, "Actions need STAGERUNNER_WEB_TOKEN, or STAGERUNNER_WEB_USER and "
                              "STAGERUNNER_WEB_PASSWORD, set where the dashboard runs.")
        if not self._signed_in(req):
            raise Denied(401, "Sign in to act.")
        if not self.guard.bearer(req.headers):
            self._check_browser_post(req)

    def _check_browser_post(self, req: Request) -> None:
        if not self.guard.same_origin(req.headers):
            raise Denied(403, "This form was not sent from this dashboard's own pages.")
        if not self.guard.csrf_ok(req.cookies, req.form.get("csrf")):
            raise Denied(403, "The form has expired or did not come from this dashboard; "
                              "reload the page and try again.")

    # Signing in --------------------------------------------------------------------------------

    def _login_page(self, req: Request, *, error: str | None = None, status: int = 200) -> Response:
        basic = self.settings.web_user is not None
        if basic and (req.args.get("basic") or self.settings.web_token is None):
            if self._signed_in(req):
                return redirect(safe_next(req.args.get("next")))
            response = self._error(req, 401, "Sign in", "This dashboard asks for a user and password.")
            response.headers.append(("WWW-Authenticate", 'Basic realm="stagerunner", charset="UTF-8"'))
            return response
        return self._render(req, "login.html", {"next": safe_next(req.args.get("next") or req.form.get("next")),
                                                "error": error, "basic": basic}, status=status)

    def _login(self, req: Request) -> Response:
        if not self.guard.token_matches(req.form.get("token", "")):
            log.warning("sign-in refused", extra={"event": "web.login_refused"})
            return self._login_page(req, error="That is not the token this dashboard was started with.",
                                    status=401)
        response = redirect(safe_next(req.form.get("next")))
        response.headers.append(("Set-Cookie", cookie(SESSION_COOKIE, self.guard.new_session(), max_age=SESSION_S)))
        return response

    def _logout(self) -> Response:
        response = redirect("/")
        response.headers.append(("Set-Cookie", cookie(SESSION_COOKIE, "", max_age=0)))
        response.headers.append(("Set-Cookie", cookie(FLASH_COOKIE, "signed_out.0", max_age=60)))
        return response

    # Rendering ---------------------------------------------------------------------------------

    def _render(self, req: Request, template: str, context: dict[str, Any], status: int = 200) -> Response:
        headers = [("Cache-Control", "no-store")]
        csrf_cookie = req.cookies.get(CSRF_COOKIE) or ""
        if not re.fullmatch(r"[0-9a-f]{32}", csrf_cookie):
            csrf_cookie = new_csrf_cookie()
            headers.append(("Set-Cookie", cookie(CSRF_COOKIE, csrf_cookie)))
        flash = None
        if not req.live and (code := req.cookies.get(FLASH_COOKIE)):
            flash = _flash(code)
            headers.append(("Set-Cookie", cookie(FLASH_COOKIE, "", max_age=0)))
        html = self.templates.get_template(template).render(
            **context, **self._common(req), csrf=self.guard.csrf_token(csrf_cookie), flash=flash,
            refresh_ms=REFRESH_MS.get(template, 0))
        return Response(status, html.encode(), headers=headers)

    def _common(self, req: Request) -> dict[str, Any]:
        """What every page's frame shows: where we are, who is signed in, what they may do."""
        signed_in = self._signed_in(req)
        return {"path": req.path, "here": req.target(), "signed_in": signed_in,
                "actions_possible": self.guard.can_act, "can_act": self.guard.can_act and signed_in,
                "readonly": self.settings.web_readonly, "token_login": self.settings.web_token is not None,
                "basic_login": self.settings.web_user is not None, "now": datetime.now(timezone.utc)}

    def _error(self, req: Request, status: int, title: str, message: str) -> Response:
        """A generic page: a fixed title and message, never an exception's text."""
        html = self.templates.get_template("error.html").render(
            **self._common(req), status=status, title=title, message=message, csrf="", flash=None,
            refresh_ms=0)
        return Response(status, html.encode(), headers=[("Cache-Control", "no-store")])

    def _static(self, name: str) -> Response:
        if name not in STATIC:
            raise views.NotFound(name)
        body = resources.files("stagerunner.web").joinpath("static", name).read_bytes()
        return Response(200, body, STATIC[name], [("Cache-Control", "max-age=60")])

    def _periodic_specs(self) -> tuple[list[registry.Spec], str | None]:
        """The cron specs of STAGERUNNER_TASK_MODULES, imported once (a failure is shown)."""
        if self._specs is None:
            modules = self.settings.task_modules
            try:
                registry.load(modules)
                self._specs = (registry.periodic(modules), None)
            except Exception as exc:
                self._specs = ([], f"cannot import STAGERUNNER_TASK_MODULES: {exc!r}")
        return self._specs


def redirect(location: str) -> Response:
    return Response(303, b"", headers=[("Location", location), ("Cache-Control", "no-store")])


def safe_next(target: str | None) -> str:
    """A local path to return to: never another site (//evil, /\\evil, https://…)."""
    if not target or not target.startswith("/") or target.startswith(("//", "/\\")) or "\r" in target \
            or "\n" in target:
        return "/"
    return target


def cookie(name: str, value: str, *, max_age: int | None = None) -> str:
    parts = [f"{name}={value}", "Path=/", "HttpOnly", "SameSite=Strict"]
    if max_age is not None:
        parts.append(f"Max-Age={max_age}")
    return "; ".join(parts)


def _flash(value: str) -> str | None:
    code, _, n = value.partition(".")
    if code not in actions.MESSAGES or not n.isdigit():
        return None
    return actions.Done(code, int(n)).message()
