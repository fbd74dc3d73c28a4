"""Who may see and do what on the dashboard. Pure checks over headers and cookies.

- The server binds a non-loopback address only when authentication is configured
  (STAGERUNNER_WEB_TOKEN, or STAGERUNNER_WEB_USER + STAGERUNNER_WEB_PASSWORD): ``check_bind``.
- Reads are open on a loopback address and need authentication anywhere else.
- Actions (POST) need authentication, so without it configured the dashboard is read-only;
  STAGERUNNER_WEB_READONLY makes it read-only regardless.
- A browser's POST must also come from our own origin (Origin, else Referer) and carry the
  CSRF token of its ``sr_csrf`` cookie: an HMAC of the cookie under a secret drawn at start.
  A request with ``Authorization: Bearer`` is a script, not a browser (browsers never add
  that header by themselves), so it needs neither.
- On a loopback address the Host header must be a loopback name too: a page elsewhere that
  rebinds its own host name to 127.0.0.1 cannot read the dashboard through its victim's browser.
- The token login sets ``sr_session``: its expiry and an HMAC of it; a restart logs out.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import ipaddress
import secrets
import socket
import time
from dataclasses import dataclass, field
from urllib.parse import urlsplit

from stagerunner.config import Settings
from stagerunner.errors import ConfigError

SESSION_COOKIE = "sr_session"
CSRF_COOKIE = "sr_csrf"
SESSION_S = 12 * 3600
LOOPBACK_NAMES = ("localhost", "localhost.localdomain", "ip6-localhost")


def is_loopback(host: str) -> bool:
    """Whether every address `host` names is a loopback one (a name is resolved)."""
    host = host.strip("[]")
    if host.lower() in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        pass
    try:
        infos = socket.getaddrinfo(host, None)
    except OSError:
        return False
    return bool(infos) and all(ipaddress.ip_address(info[4][0]).is_loopback for info in infos)


def check_bind(settings: Settings) -> None:
    """Refuse to serve a non-loopback address without authentication."""
    if not is_loopback(settings.web_host) and not auth_configured(settings):
        raise ConfigError(
            f"STAGERUNNER_WEB_HOST={settings.web_host!r} is not a loopback address: set "
            "STAGERUNNER_WEB_TOKEN (or STAGERUNNER_WEB_USER and STAGERUNNER_WEB_PASSWORD) "
            "before serving the dashboard beyond this machine")


def auth_configured(settings: Settings) -> bool:
    return settings.web_token is not None or settings.web_user is not None


@dataclass
class Guard:
    settings: Settings
    secret: bytes = field(default_factory=lambda: secrets.token_bytes(32))

    @property
    def loopback(self) -> bool:
        return is_loopback(self.settings.web_host)

    @property
    def can_act(self) -> bool:
        """Whether this dashboard takes actions at all (buttons shown to signed-in users)."""
        return auth_configured(self.settings) and not self.settings.web_readonly

    def reads_need_auth(self) -> bool:
        return not self.loopback

    # Authentication ----------------------------------------------------------------------

    def authenticated(self, headers: dict[str, str], cookies: dict[str, str]) -> bool:
        return self.bearer(headers) or self._basic(headers) or self._session(cookies)

    def bearer(self, headers: dict[str, str]) -> bool:
        token = self.settings.web_token
        scheme, _, value = headers.get("authorization", "").partition(" ")
        return (token is not None and scheme.lower() == "bearer"
                and _same(value.strip(), token.get_secret_value()))

    def _basic(self, headers: dict[str, str]) -> bool:
        user, password = self.settings.web_user, self.settings.web_password
        scheme, _, value = headers.get("authorization", "").partition(" ")
        if user is None or password is None or scheme.lower() != "basic":
            return False
        try:
            given_user, _, given_password = base64.b64decode(value.strip()).decode().partition(":")
        except (ValueError, UnicodeDecodeError):
            return False
        # both compared, always: the time taken says nothing about which one was wrong
        return _same(given_user, user) & _same(given_password, password.get_secret_value())

    def token_matches(self, given: str) -> bool:
        token = self.settings.web_token
        return token is not None and _same(given, token.get_secret_value())

    def new_session(self) -> str:
        expires = str(int(time.time()) + SESSION_S)
        return f"{expires}.{self._sign('session', expires)}"

    def _session(self, cookies: dict[str, str]) -> bool:
        expires, _, signature = cookies.get(SESSION_COOKIE, "").partition(".")
        return (expires.isdigit() and int(expires) > time.time() and self.settings.web_token is not None
                and _same(signature, self._sign("session", expires)))

    # CSRF and origin -----------------------------------------------------------------------

    def csrf_token(self, cookie: str) -> str:
        return self._sign("csrf", cookie)

    def csrf_ok(self, cookies: dict[str, str], given: str | None) -> bool:
        cookie = cookies.get(CSRF_COOKIE, "")
        return bool(cookie) and given is not None and _same(given, self.csrf_token(cookie))

    @staticmethod
    def same_origin(headers: dict[str, str]) -> bool:
        """The POST came from a page of ours: its Origin (else Referer) names our Host."""
        host = headers.get("host", "")
        source = headers.get("origin") or headers.get("referer")
        if not host or not source or source == "null":
            return False
        return urlsplit(source).netloc.lower() == host.lower()

    def host_ok(self, headers: dict[str, str]) -> bool:
        if not self.loopback:
            return True
        name = urlsplit("//" + headers.get("host", "")).hostname or ""
        return is_loopback_literal(name)

    def _sign(self, purpose: str, value: str) -> str:
        return hmac.new(self.secret, f"{purpose}:{value}".encode(), hashlib.sha256).hexdigest()


def is_loopback_literal(name: str) -> bool:
    """A loopback address or name, without asking DNS (a Host header is attacker-chosen)."""
    if name.lower() in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


def _same(given: str, expected: str) -> bool:
    return hmac.compare_digest(given.encode(), expected.encode())


def new_csrf_cookie() -> str:
    return secrets.token_hex(16)
