"""A PgBouncer of our own (Debian's ``pgbouncer`` package) on a free loopback port, in
front of a PostgreSQL server, for the tests and runs that prove stagerunner works through
transaction pooling.

``server_round_robin`` is on, so consecutive transactions of one client land on different
server connections as soon as the pool holds more than one: anything a client left in a
session (a prepared statement, a SET, a LISTEN) is then missing on its next transaction,
and the tests see it at once instead of on a busy day.
"""

from __future__ import annotations

import os
import pwd
import shutil
import signal
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import psycopg
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from stagerunner_tools.pgserver import free_port, run_as

CONFIG = """\
[databases]
* = host={host} port={port}

[pgbouncer]
listen_addr = 127.0.0.1
listen_port = {listen}
unix_socket_dir =
auth_type = trust
auth_file = {dir}/userlist.txt
admin_users = postgres
pool_mode = {pool_mode}
server_round_robin = 1
default_pool_size = {pool_size}
min_pool_size = {pool_size}
max_client_conn = 500
logfile = {dir}/pgbouncer.log
pidfile = {dir}/pgbouncer.pid
"""


def binary() -> str | None:
    return shutil.which("pgbouncer") or (
        "/usr/sbin/pgbouncer" if os.access("/usr/sbin/pgbouncer", os.X_OK) else None)


@dataclass
class Bouncer:
    process: subprocess.Popen[bytes]
    dir: Path
    port: int

    @classmethod
    def start(cls, upstream_dsn: str, pool_mode: str = "transaction", pool_size: int = 4,
              timeout: float = 20) -> Bouncer:
        """PgBouncer in front of the server `upstream_dsn` points at (every database, trust
        auth for the user it names); waits until it answers."""
        exe = binary()
        if exe is None:
            raise FileNotFoundError("pgbouncer is not installed (apt-get install pgbouncer)")
        info = conninfo_to_dict(upstream_dsn)
        user = str(info.get("user") or "postgres")
        workdir = Path(tempfile.mkdtemp(prefix="sr-pgbouncer-"))
        port = free_port()
        (workdir / "pgbouncer.ini").write_text(CONFIG.format(
            host=info.get("host") or "127.0.0.1", port=info.get("port") or 5432, listen=port,
            dir=workdir, pool_mode=pool_mode, pool_size=pool_size))
        (workdir / "userlist.txt").write_text(f'"{user}" ""\n')
        argv = [exe, str(workdir / "pgbouncer.ini")]
        owner = run_as()  # pgbouncer refuses to run as root
        if owner:
            entry = pwd.getpwnam(owner)
            for path in (workdir, *workdir.iterdir()):
                os.chown(path, entry.pw_uid, entry.pw_gid)
            argv = ["runuser", "-u", owner, "--", *argv]
        process = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                   stderr=subprocess.DEVNULL, start_new_session=True)
        bouncer = cls(process, workdir, port)
        bouncer._wait(user, timeout)
        return bouncer

    def _wait(self, user: str, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while True:
            try:
                psycopg.connect(self.dsn("postgres", user), connect_timeout=2).close()
                return
            except psycopg.OperationalError:
                if self.process.poll() is not None or time.monotonic() > deadline:
                    self.stop()
                    raise RuntimeError(f"pgbouncer did not start: {self.log_tail()}") from None
                time.sleep(0.1)

    def dsn(self, dbname: str, user: str = "postgres") -> str:
        return make_conninfo(host="127.0.0.1", port=self.port, dbname=dbname, user=user)

    def through(self, dsn: str) -> str:
        """The same database and user as `dsn`, through this PgBouncer."""
        info = conninfo_to_dict(dsn)
        return self.dsn(str(info["dbname"]), str(info.get("user") or "postgres"))

    def log(self) -> str:
        try:
            return (self.dir / "pgbouncer.log").read_text(errors="replace")
        except OSError:
            return ""

    def log_tail(self, n: int = 15) -> str:
        return " | ".join(self.log().splitlines()[-n:]) or "(empty log)"

    def stop(self) -> None:
        # its own session: runuser and the pgbouncer under it
        for sig, wait in ((signal.SIGTERM, 10), (signal.SIGKILL, 10)):
            if self.process.poll() is not None:
                break
            try:
                os.killpg(self.process.pid, sig)
                self.process.wait(timeout=wait)
            except (ProcessLookupError, subprocess.TimeoutExpired):
                pass
        shutil.rmtree(self.dir, ignore_errors=True)
