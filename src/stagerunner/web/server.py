"""``python -m stagerunner web``: HTTP on the stdlib's ThreadingHTTPServer, one thread per
request, with a few pooled database connections. It needs only the database, not a node.

    browser ──HTTP──> Handler (parse) ──Request──> app.Dashboard ──> views / actions
                                                          └── Pool: ≤ POOL_SIZE connections
"""

from __future__ import annotations

import logging
import queue
import signal
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from http.cookies import CookieError, SimpleCookie
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import FrameType
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import psycopg

from stagerunner import database, logs, migrations, store
from stagerunner.config import Settings
from stagerunner.web import guard, queries
from stagerunner.web.app import Dashboard, Request, Response
from stagerunner.web.queries import Conn

log = logging.getLogger(__name__)

POOL_SIZE = 4
STATEMENT_TIMEOUT_MS = 10_000
MAX_BODY = 64 * 1024
REQUEST_TIMEOUT_S = 30  # a client that stops sending is dropped, and frees its thread


class Pool:
    """At most `size` connections, kept open between requests; a broken one is dropped."""

    def __init__(self, dsn: str, size: int = POOL_SIZE) -> None:
        self.dsn = dsn
        self.idle: queue.LifoQueue[Conn] = queue.LifoQueue()
        self.slots = threading.BoundedSemaphore(size)

    @contextmanager
    def connection(self) -> Iterator[Conn]:
        if not self.slots.acquire(timeout=STATEMENT_TIMEOUT_MS / 1000):
            raise psycopg.OperationalError("every dashboard connection is busy")
        conn = None
        try:
            conn = self._take()
            yield conn
        finally:
            if conn is not None and not conn.closed and not conn.broken \
                    and conn.info.transaction_status == psycopg.pq.TransactionStatus.IDLE:
                self.idle.put(conn)
            elif conn is not None:
                conn.close()
            self.slots.release()

    def _take(self) -> Conn:
        try:
            return self.idle.get_nowait()
        except queue.Empty:
            # prepare_threshold=None: every statement is planned with its values, so an
            # unused filter folds away instead of a generic plan scanning for it
            conn = store.connect(self.dsn, connect_timeout=5, prepare_threshold=None)
            queries.session(conn, timeout_ms=STATEMENT_TIMEOUT_MS)
            return conn

    def close(self) -> None:
        while not self.idle.empty():
            self.idle.get_nowait().close()


def make_handler(app: Dashboard) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        server_version = "stagerunner"
        sys_version = ""
        protocol_version = "HTTP/1.1"
        timeout = REQUEST_TIMEOUT_S

        def do_GET(self) -> None:  # noqa: N802 (the stdlib's name)
            self._serve(b"")

        def do_POST(self) -> None:  # noqa: N802
            length = self.headers.get("Content-Length", "0")
            if not length.isdigit() or int(length) > MAX_BODY:
                self._send(Response(413, b"request too large\n", "text/plain; charset=utf-8"))
                return
            self._serve(self.rfile.read(int(length)))

        def _serve(self, body: bytes) -> None:
            started = time.perf_counter()
            response = app.handle(parse_request(self.command, self.path, dict(self.headers.items()), body))
            self._send(response)
            log.info("request", extra={"event": "web.request", "method": self.command,
                                       "path": urlsplit(self.path).path[:200], "status": response.status,
                                       "ms": round((time.perf_counter() - started) * 1000, 1)})

        def _send(self, response: Response) -> None:
            self.send_response(response.status)
            self.send_header("Content-Type", response.content_type)
            self.send_header("Content-Length", str(len(response.body)))
            for name, value in response.headers:
                self.send_header(name, value)
            self.end_headers()
            self.wfile.write(response.body)

        def log_message(self, format: str, *args: Any) -> None:
            pass  # one structured line per request is written by _serve instead

    return Handler


def parse_request(method: str, target: str, headers: dict[str, str], body: bytes) -> Request:
    parts = urlsplit(target)
    lower = {k.lower(): v for k, v in headers.items()}
    cookies: dict[str, str] = {}
    try:
        jar = SimpleCookie(lower.get("cookie", ""))
        cookies = {name: morsel.value for name, morsel in jar.items()}
    except CookieError:
        pass
    form = {}
    if lower.get("content-type", "").startswith("application/x-www-form-urlencoded"):
        form = dict(reversed(parse_qsl(body.decode("utf-8", "replace"), keep_blank_values=True)))
    args = dict(reversed(parse_qsl(parts.query, keep_blank_values=True)))
    return Request(method, parts.path, parts.query, args, form, lower, cookies)


def serve(settings: Settings) -> int:
    """Serve until SIGTERM or SIGINT; exit 2 on a setting that cannot be served."""
    guard.check_bind(settings)  # ConfigError -> exit 2 (before touching the database)
    db = database.open_database(settings)
    try:
        with store.connect(db.dsn, connect_timeout=10) as conn:
            migrations.check_schema(conn)
    except psycopg.OperationalError as exc:
        print(f"stagerunner: cannot connect to the database: {logs.redact(str(exc).strip())}", file=sys.stderr)
        return 1
    pool = Pool(db.dsn)
    app = Dashboard(settings, pool.connection)
    try:
        server = ThreadingHTTPServer((settings.web_host, settings.web_port), make_handler(app))
    except OSError as exc:
        print(f"stagerunner: cannot listen on {settings.web_host}:{settings.web_port}: {exc.strerror}",
              file=sys.stderr)
        return 2
    server.daemon_threads = True

    def stop(signum: int, frame: FrameType | None) -> None:
        threading.Thread(target=server.shutdown, daemon=True).start()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    host, port = server.server_address[:2]
    mode = ("read-only" if settings.web_readonly else
            "actions for signed-in users" if app.guard.can_act else "view only (no token set)")
    # no DSN in the log, not even without its password
    log.info("dashboard serving", extra={"event": "web.started", "url": f"http://{_url_host(str(host))}:{port}/",
                                         "mode": mode})
    try:
        server.serve_forever(poll_interval=0.5)
    finally:
        server.server_close()
        pool.close()
    log.info("dashboard stopped", extra={"event": "web.stopped"})
    return 0


def _url_host(host: str) -> str:
    return f"[{host}]" if ":" in host else host
