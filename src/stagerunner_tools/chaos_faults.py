"""The faults of the chaos run (``bin/chaos``), one method each, picked at random by
``Faults.strike`` (the first strikes go through every enabled kind once, in random order,
so that even a short run injects each of them):

- ``kill``: SIGKILL a consumer, a consumer's fork helper or the producer of one node;
- ``terminate``: pg_terminate_backend every node's connection to the chaos database;
- ``freeze``: SIGSTOP every process of one node (supervisor, stages, fork helpers, jobs)
  for 0.5-2x that node's lease (``STAGERUNNER_NODE_EXPIRY``), then SIGCONT: past the
  lease the other nodes rescue its tasks while the kernel timers kill its jobs;
- ``notify``: a burst of hostile NOTIFYs on every channel the runtime LISTENs on, from a
  role of their own: garbage, huge payloads, ids of running tasks nobody cancelled;
- ``lock``: a transaction holding locks on ``stagerunner.tasks`` for a few seconds (the
  table in SHARE ROW EXCLUSIVE mode, or FOR UPDATE on waiting or on running rows);
- ``migrate``: ``python -m stagerunner migrate`` in the background; half of the time
  forced to re-apply the whole schema (its version row deleted first: the CLI has no
  flag for a re-run), which takes the tasks table's locks with ``lock_timeout`` and
  retries behind a held lock;
- ``pg-restart``: ``pg_ctl restart -m fast`` of the chaos run's private server.

Faults that last (a freeze, a held lock, a migration) are undone by ``tick`` when their
time comes and by ``settle`` at the end. Every fault is written to ``timeline`` (wall
clock), which the checks read to tell hostile input from the other faults.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg

from stagerunner import store
from stagerunner_tools import dbs, procfs
from stagerunner_tools.nodes import ROOT, NodeProcess
from stagerunner_tools.pgserver import PrivatePG

KINDS = ("kill", "terminate", "freeze", "notify", "lock", "migrate", "pg-restart")
WEIGHTS = {"kill": 6.0, "terminate": 3.0, "freeze": 1.0, "notify": 3.0, "lock": 1.0,
           "migrate": 1.0, "pg-restart": 0.3}
CHANNELS = ("stagerunner_cancel", "stagerunner_tasks", "stagerunner_queues",
            "stagerunner_results")  # every channel src/stagerunner LISTENs on
NOTIFY_MAX = 7999  # PostgreSQL refuses payloads of 8000 bytes and more


@dataclass
class ChaosNode:
    """One node of the run and the settings it was started with."""

    name: str
    consumers: int
    heartbeat: float
    expiry: float
    process: NodeProcess | None = None
    frozen: bool = False

    def alive(self) -> bool:
        return self.process is not None and self.process.proc.poll() is None


class Link:
    """A harness connection that reconnects after a terminated session or a restart."""

    def __init__(self, dsn: str, **kwargs: Any) -> None:
        self.dsn, self.kwargs = dsn, kwargs
        self.conn: psycopg.Connection[Any] | None = None

    def get(self) -> psycopg.Connection[Any]:
        if self.conn is None or self.conn.closed or self.conn.broken:
            self.drop()
            self.conn = dbs.connect_retrying(self.dsn, timeout=60, **self.kwargs)
        return self.conn

    def attempt(self, work: Callable[[psycopg.Connection[Any]], Any], default: Any = None) -> Any:
        """`work` on the connection; on a database error drop it (the next call reconnects)
        and return `default`."""
        try:
            return work(self.get())
        except psycopg.Error:
            self.drop()
            return default

    def drop(self) -> None:
        store.close_quietly(self.conn)
        self.conn = None


@dataclass
class Pending:
    """A fault that lasts: `undo` runs at `at` (monotonic), or at the end of the storm."""

    kind: str
    at: float
    undo: Callable[[], None]


@dataclass
class Migration:
    proc: subprocess.Popen[bytes]
    log_path: Path
    forced: bool
    started: float


@dataclass
class Faults:
    nodes: list[ChaosNode]
    dsn: str  # the chaos database, as the admin role
    dbname: str
    workdir: Path
    rng: random.Random
    server: PrivatePG | None = None  # the private server, restartable; None on a shared one
    hostile_dsn: str | None = None  # the hostile role's DSN (None: the admin role's)
    enabled: tuple[str, ...] = KINDS
    counts: Counter[str] = field(default_factory=Counter)
    kills: Counter[str] = field(default_factory=Counter)  # consumer, forker, producer, server
    details: Counter[str] = field(default_factory=Counter)  # sessions, past-lease, forced ...
    timeline: list[tuple[float, str]] = field(default_factory=list)  # (wall clock, kind)
    problems: list[str] = field(default_factory=list)
    pending: list[Pending] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.admin = Link(self.dsn, application_name="stagerunner-chaos-faults")
        self.hostile = Link(self.hostile_dsn or self.dsn, application_name="chaos-hostile")
        self.migration: Migration | None = None
        self.first_round = [k for k in self.enabled if k != "pg-restart" or self.server]
        self.rng.shuffle(self.first_round)

    # Choosing --------------------------------------------------------------------------

    def applicable(self, kind: str) -> bool:
        busy = {p.kind for p in self.pending}
        if kind == "freeze":  # one node at a time
            return "freeze" not in busy and bool(self.awake())
        if kind == "pg-restart":  # a restart would fail the migration, not test it
            return self.server is not None and self.migration is None
        if kind == "migrate":
            return self.migration is None
        if kind == "lock":
            return "lock" not in busy
        if kind == "terminate":  # it would end the migration's session too: a failed deploy
            return self.migration is None  # step, to retry, not what this run is after
        return True

    def strike(self) -> str:
        """Inject one fault; its kind."""
        ready = [k for k in self.first_round if self.applicable(k)]
        if ready:
            kind = ready[0]
            self.first_round.remove(kind)
        else:
            kinds = [k for k in self.enabled if self.applicable(k)]
            if not kinds:
                return ""
            kind = self.rng.choices(kinds, [WEIGHTS[k] for k in kinds])[0]
        self.timeline.append((time.time(), kind))
        done = getattr(self, "_" + kind.replace("-", "_"))()
        if done:
            self.counts[kind] += 1
        elif ready and sum(k == kind for _, k in self.timeline) < 3:
            self.first_round.append(kind)  # not now (no target, a lock not granted): again
        self.note(f"{kind} {'done' if done else 'skipped'}")
        return kind

    def note(self, what: str) -> None:
        """A line in the work directory's faults.log (kept with the node logs on a FAIL)."""
        stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime())
        with open(self.workdir / "faults.log", "a") as f:
            f.write(f"{stamp}.{int(time.time() % 1 * 1000):03d}Z {what}\n")

    def awake(self) -> list[ChaosNode]:
        return [n for n in self.nodes if n.alive() and not n.frozen]

    # Lasting faults --------------------------------------------------------------------

    def tick(self) -> None:
        """Undo the lasting faults whose time has come."""
        now = time.monotonic()
        for p in [p for p in self.pending if p.at <= now]:
            self.pending.remove(p)
            p.undo()
        self._migration_done(wait=False)

    def settle(self) -> None:
        """Undo every lasting fault now (the end of the storm)."""
        while self.pending:
            self.pending.pop(0).undo()
        self._migration_done(wait=True)
        self.admin.drop()
        self.hostile.drop()

    # kill ------------------------------------------------------------------------------

    def _kill(self) -> bool:
        awake = self.awake()
        if not awake:
            return False
        node = self.rng.choice(awake)
        assert node.process is not None
        producer, consumers = node.process.stages()
        stage = self.rng.choices(["consumer", "forker", "producer", "server"], [4, 1, 1, 1])[0]
        targets = {"consumer": consumers, "producer": [producer] if producer else [],
                   "forker": [f for c in consumers for f in procfs.children(c)],
                   "server": procfs.fork_servers(node.process.pid)}[stage]
        if not targets:
            return False
        victim = self.rng.choice(targets)
        try:
            os.kill(victim, signal.SIGKILL)
        except ProcessLookupError:
            return False
        self.kills[stage] += 1
        self.note(f"  SIGKILL {stage} {victim} of {node.name}")
        return True

    # terminate -------------------------------------------------------------------------

    def _terminate(self) -> bool:
        found = self.admin.attempt(lambda c: dbs.terminate_node_sessions(c, self.dbname))
        self.details["sessions"] += found or 0
        return found is not None

    # freeze ----------------------------------------------------------------------------

    def _freeze(self) -> bool:
        node = self.rng.choice(self.awake())
        assert node.process is not None
        seconds = self.rng.uniform(0.5, 2.0) * node.expiry
        seen = stop_tree(node.process)
        node.frozen = True
        self.note(f"  SIGSTOP {node.name} for {seconds:.1f} s: {sorted(seen)}")
        self.details["frozen processes"] += len(seen)
        if seconds > node.expiry:
            self.details["freeze-past-lease"] += 1

        def thaw() -> None:
            assert node.process is not None
            cont_tree(node.process, seen)
            node.frozen = False
            self.note(f"thaw {node.name}")

        self.pending.append(Pending("freeze", time.monotonic() + seconds, thaw))
        return True

    # notify ----------------------------------------------------------------------------

    def _notify(self) -> bool:
        running = self.admin.attempt(lambda c: [r[0] for r in c.execute(
            "SELECT id FROM stagerunner.tasks WHERE status = 'running' LIMIT 5").fetchall()], [])
        notes = hostile_notes(self.rng, running)

        def send(conn: psycopg.Connection[Any]) -> int:
            for channel, payload in notes:
                conn.execute("SELECT pg_notify(%s, %s)", [channel, payload])
            return len(notes)

        sent = self.hostile.attempt(send, 0)
        self.details["notifications"] += sent
        return sent > 0

    # lock ------------------------------------------------------------------------------

    def _lock(self) -> bool:
        how = self.rng.choice(["table", "waiting rows", "running rows"])
        seconds = self.rng.uniform(0.5, 3.0) if how != "waiting rows" else self.rng.uniform(1, 6)
        statement = {
            "table": "LOCK TABLE stagerunner.tasks IN SHARE ROW EXCLUSIVE MODE",
            "waiting rows": "SELECT id FROM stagerunner.tasks WHERE status = 'waiting' "
                            "ORDER BY id LIMIT 20 FOR UPDATE",
            "running rows": "SELECT id FROM stagerunner.tasks WHERE status = 'running' "
                            "FOR UPDATE",
        }[how]
        try:  # a transaction of its own, open until the undo
            conn = psycopg.connect(self.dsn, connect_timeout=3, application_name="chaos-lock",
                                   options="-c lock_timeout=2s")
        except psycopg.Error:
            return False
        try:
            conn.execute(statement)
        except psycopg.Error:
            conn.close()
            return False

        def release() -> None:
            try:
                conn.rollback()
            except psycopg.Error:
                pass  # a restart or a termination ended it already
            conn.close()

        self.details[f"lock {how}"] += 1
        self.note(f"  {how} for {seconds:.1f} s")
        self.pending.append(Pending("lock", time.monotonic() + seconds, release))
        return True

    # migrate ---------------------------------------------------------------------------

    def _migrate(self) -> bool:
        forced = self.rng.random() < 0.5
        if forced and self.admin.attempt(
                lambda c: c.execute("DELETE FROM stagerunner.schema_version")) is None:
            return False
        n = self.counts["migrate"] + 1
        log_path = self.workdir / f"migrate-{n}.log"
        env = {k: v for k, v in os.environ.items() if not k.startswith("STAGERUNNER_")}
        env["STAGERUNNER_DATABASE_URL"] = self.dsn
        env["PYTHONPATH"] = os.pathsep.join([str(ROOT / "src"), env.get("PYTHONPATH", "")])
        with open(log_path, "wb") as out:
            proc = subprocess.Popen([sys.executable, "-m", "stagerunner", "migrate"], cwd=ROOT,
                                    env=env, stdin=subprocess.DEVNULL, stdout=out,
                                    stderr=subprocess.STDOUT)
        self.details["migrate forced"] += forced
        self.migration = Migration(proc, log_path, forced, time.monotonic())
        self.note(f"  migrate {n} (forced={forced}), pid {proc.pid}")
        return True

    def _migration_done(self, wait: bool) -> None:
        """Account for the running migration once it exited (with `wait`: wait for it)."""
        m = self.migration
        if m is None or (m.proc.poll() is None and not wait):
            return
        try:
            code = m.proc.wait(timeout=180)
        except subprocess.TimeoutExpired:
            m.proc.kill()
            code = m.proc.wait()
        self.migration = None
        took = time.monotonic() - m.started
        self.details["migrate max ms"] = max(self.details["migrate max ms"], int(took * 1000))
        text = m.log_path.read_text(errors="replace")
        self.details["migrate lock waits"] += text.count("schema.lock_wait")
        self.details["migrate applied"] += "schema.installed" in text
        if code != 0:
            self.problems.append(f"migrate failed: exit {code} after {took:.1f} s "
                                 f"(forced={m.forced}): {text.strip()[-300:]!r}")

    # pg-restart ------------------------------------------------------------------------

    def _pg_restart(self) -> bool:
        assert self.server is not None
        try:
            took = self.server.restart("fast")
        except Exception as exc:
            self.problems.append(f"pg-restart failed: {exc}")
            return False
        self.note(f"  pg-restart took {took:.2f} s")
        self.details["pg-restart max ms"] = max(self.details["pg-restart max ms"], int(took * 1000))
        self.admin.drop()
        self.hostile.drop()
        return True


# Processes ---------------------------------------------------------------------------

def stop_tree(node: NodeProcess) -> dict[int, float]:
    """SIGSTOP the node's supervisor, then everything below it, until a pass finds nothing
    new (a process forked meanwhile is stopped by the next pass). pid -> when seen."""
    seen: dict[int, float] = {}
    todo = [node.pid]
    for _ in range(20):
        for pid in todo:
            try:
                os.kill(pid, signal.SIGSTOP)
                seen[pid] = time.time()
            except ProcessLookupError:
                pass
        todo = [p for p in node.tree() if p not in seen]
        if not todo:
            break
    return seen


def cont_tree(node: NodeProcess, seen: dict[int, float]) -> None:
    """SIGCONT what we stopped (each only if it is still the process we saw) and anything
    of the node's tree that is stopped now, the supervisor last."""
    pids = [p for p, t in seen.items() if procfs.alive_since(p, t)]
    pids += [p for p in node.tree() if p not in seen]
    for pid in sorted(pids, key=lambda p: p == node.pid):
        try:
            os.kill(pid, signal.SIGCONT)
        except ProcessLookupError:
            pass


# Hostile input -----------------------------------------------------------------------

def hostile_notes(rng: random.Random, running: list[int]) -> list[tuple[str, str]]:
    """5-15 notifications on the runtime's channels with payloads no node sent: garbage,
    the largest payload PostgreSQL takes, numbers of every shape, ids of running tasks
    that nobody cancelled, lists of queue names that do not exist."""
    ids = ",".join(map(str, running)) or "1"
    payloads = [
        "", "garbage", "-1", "0", "1e309", "NaN", "-0x7fffffffffffffff", "9" * NOTIFY_MAX,
        "x" * NOTIFY_MAX, ids, str(running[0]) if running else "2", f"{ids},{ids},nope",
        ",".join(["default"] * 1000), ",,,,", "default\n" * 100, "\u2603\u00e9\u202e",
        "'; DROP TABLE stagerunner.tasks; --", '{"id": 1, "cancel": true}', "%s %d {0}",
        ",".join(f"q{i}" for i in range(1500)),
    ]
    return [(rng.choice(CHANNELS), fit(rng.choice(payloads))) for _ in range(rng.randint(5, 15))]


def fit(payload: str) -> str:
    """At most NOTIFY_MAX bytes of UTF-8, cut at a character's boundary."""
    return payload.encode()[:NOTIFY_MAX].decode(errors="ignore")
