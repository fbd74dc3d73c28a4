"""Chaos run: one node under a steady stream of mixed tasks while its stages are SIGKILLed
and its database connections terminated at random; then the runner's invariants are checked.

    bin/chaos --seconds N [--dsn ADMIN_DSN] [--consumers C] [--rate R] [--seed S] [--keep]

It creates its own database from the admin DSN (default
postgresql://postgres@127.0.0.1:5432/postgres), runs ``python -m stagerunner run`` against
it with STAGERUNNER_TASK_MODULES=stagerunner.chaos (the tasks below), and for N seconds:

- enqueues R tasks a second, a mix of ``ok``, ``flaky`` (raises sometimes), ``sleepy``
  (sleeps past its deadline), ``crash`` (``os._exit``) and, rarely, ``killer`` (SIGKILLs its
  own consumer half of the time);
- about once a second does one of: SIGKILL a consumer, SIGKILL a consumer's fork
  helper, SIGKILL the producer, pg_terminate_backend the node's connections (only those
  to its own database).

Then it lets the node drain, stops it with SIGTERM and checks:

- nothing lost: every task is terminal, or ``waiting`` for a retry (none ``running``);
- attempts as documented: ``attempts <= max_attempts + lost``, and every run the tasks
  recorded was a claim (runs of a task <= its attempts);
- no overlapping runs of one task (each run appends start/tick/end lines to a file);
- statuses fit the task (``crash`` never succeeds, ``sleepy`` never succeeds, a success
  ran to its end);
- no leaked processes (recorded job pids, and anything carrying the run's node name);
- the node stopped cleanly (exit 0).

It prints ONE verdict line and exits 0 on PASS, 1 on FAIL (details go to stderr, and the
work directory with the node log and the run records is kept).

This module is imported by consumers (it is the task module), so it stays lean: psycopg
and the harness's imports are loaded inside the harness functions only. Like bench.py it
is a harness, not the runner: its few statements of admin SQL (create and drop its
database, pg_terminate_backend) live here rather than in sql/.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from stagerunner import task

RECORD_ENV = "SR_CHAOS_RECORD"  # not STAGERUNNER_*: job children keep it in their environment
DEFAULT_ADMIN_DSN = "postgresql://postgres@127.0.0.1:5432/postgres"
TERMINAL = ("success", "error", "timeout", "cancelled")


# The tasks (run inside job children) ------------------------------------------------------

def _mark(key: str, event: str) -> None:
    path = os.environ.get(RECORD_ENV)
    if not path:
        return
    line = json.dumps({"key": key, "pid": os.getpid(), "event": event, "t": time.time()}) + "\n"
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, line.encode())  # one write per line: concurrent runs never interleave
    finally:
        os.close(fd)


def _task(**options: Any) -> Any:
    """@task under a stable name: `python -m stagerunner.chaos` runs this file as __main__."""
    return lambda fn: task(fn, name=f"stagerunner.chaos:{fn.__name__}", **options)


def _alive_for(key: str, seconds: float, tick: float = 0.05) -> None:
    end = time.monotonic() + seconds
    while (left := end - time.monotonic()) > 0:
        time.sleep(min(tick, left))
        _mark(key, "tick")


@_task()
def ok(key: str) -> str:
    _mark(key, "start")
    _alive_for(key, random.uniform(0.0, 0.1))
    _mark(key, "end")
    return key


@_task(max_attempts=3)
def flaky(key: str, p: float = 0.3) -> str:
    _mark(key, "start")
    _alive_for(key, random.uniform(0.0, 0.1))
    _mark(key, "end")
    if random.random() < p:
        raise RuntimeError("chaos: flaky failure")
    return key


@_task(timeout=0.3, max_attempts=2)
def sleepy(key: str, seconds: float = 1.0) -> str:
    _mark(key, "start")
    _alive_for(key, seconds)  # past its 0.3 s deadline: killed there
    _mark(key, "end")
    return key


@_task(max_attempts=2)
def crash(key: str) -> None:
    _mark(key, "start")
    os._exit(1)


@_task()
def killer(key: str, p: float = 0.5) -> str:
    _mark(key, "start")
    if random.random() < p:
        os.kill(_ppid(os.getppid()), signal.SIGKILL)  # the consumer: our parent is its forker
        _alive_for(key, 5.0)  # dies with it (PR_SET_PDEATHSIG) long before this ends
    _mark(key, "end")
    return key


MIX = [("ok", 60), ("flaky", 20), ("sleepy", 8), ("crash", 8), ("killer", 1)]


# Process inspection -------------------------------------------------------------------------

def _stat(pid: int) -> list[str] | None:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None


def _ppid(pid: int) -> int:
    fields = _stat(pid)
    return int(fields[1]) if fields else 0


def _alive(pid: int) -> bool:
    fields = _stat(pid)
    return fields is not None and fields[0] != "Z"


_CLK_TCK = os.sysconf("SC_CLK_TCK")


def _started_at(pid: int) -> float | None:
    """Wall-clock start of a live process (from its start time in ticks since boot)."""
    fields = _stat(pid)
    if fields is None or fields[0] == "Z":
        return None
    return time.time() - time.clock_gettime(time.CLOCK_BOOTTIME) + int(fields[19]) / _CLK_TCK


def _still_alive(pid: int, seen_at: float) -> bool:
    """The process we saw alive at `seen_at` is alive: pids are reused (pid_max may be
    32768 and a chaos run forks tens of thousands of jobs), so a live pid is only the same
    process if it started before we saw it."""
    start = _started_at(pid)
    return start is not None and start <= seen_at


def _cmdline(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def _pids() -> list[int]:
    return [int(e) for e in os.listdir("/proc") if e.isdigit()]


def _children(pid: int) -> list[int]:
    out = []
    for p in _pids():
        fields = _stat(p)
        if fields is not None and fields[0] != "Z" and int(fields[1]) == pid:
            out.append(p)
    return out


# The run -------------------------------------------------------------------------------------

@dataclass
class Run:
    start: float
    last: float
    ended: bool


@dataclass
class Chaos:
    admin_dsn: str
    seconds: float
    consumers: int = 4
    rate: float = 20.0
    seed: int | None = None
    keep: bool = False
    say: Any = print
    rng: random.Random = field(default_factory=random.Random)
    kills: Counter[str] = field(default_factory=Counter)
    terminations: int = 0
    kinds: dict[int, str] = field(default_factory=dict)  # task id -> task function
    keys: dict[int, str] = field(default_factory=dict)   # task id -> key it records under
    problems: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        if self.seed is not None:
            self.rng.seed(self.seed)
        self.tag = f"chaos-{os.getpid()}-{secrets.token_hex(3)}"
        self.dbname = self.tag.replace("-", "_")
        self.workdir = Path(tempfile.mkdtemp(prefix=f"stagerunner-{self.tag}-"))
        self.record = self.workdir / "runs.jsonl"
        self.log_path = self.workdir / "node.log"
        self.node: subprocess.Popen[bytes] | None = None
        self.next_key = 0

    # Database --------------------------------------------------------------------------

    def _dsn(self) -> str:
        from psycopg.conninfo import conninfo_to_dict, make_conninfo

        info = conninfo_to_dict(self.admin_dsn)
        info["dbname"] = self.dbname
        return make_conninfo(**{k: v for k, v in info.items() if v is not None})

    def _connect(self, dsn: str | None = None) -> Any:
        import psycopg

        return psycopg.connect(dsn or self._dsn(), autocommit=True, connect_timeout=10,
                               application_name="stagerunner-chaos")

    def create_database(self) -> None:
        from stagerunner import store

        with self._connect(self.admin_dsn) as admin:
            admin.execute(f'CREATE DATABASE "{self.dbname}"')
        with self._connect() as conn:
            store.install_schema(conn)

    def drop_database(self) -> None:
        try:
            with self._connect(self.admin_dsn) as admin:
                admin.execute(f'DROP DATABASE IF EXISTS "{self.dbname}" WITH (FORCE)')
        except Exception as exc:  # leave it; say so
            print(f"chaos: could not drop database {self.dbname}: {exc}", file=sys.stderr)

    def terminate_connections(self, conn: Any) -> int:
        """pg_terminate_backend the node's sessions; only those to our own database."""
        row = conn.execute(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
            "WHERE datname = current_database() AND application_name = 'stagerunner' "
            "AND pid <> pg_backend_pid()").fetchone()
        return int(row[0]) if row else 0

    # The node --------------------------------------------------------------------------

    def start_node(self) -> None:
        env = {k: v for k, v in os.environ.items()
               if not k.startswith("STAGERUNNER_") and k not in ("DATABASE_URL", "PGHOST",
                                                                  "PGDATABASE", "PGSERVICE")}
        env.update({
            "STAGERUNNER_DATABASE_URL": self._dsn(),
            "STAGERUNNER_TASK_MODULES": "stagerunner.chaos",
            "STAGERUNNER_CONSUMERS": str(self.consumers),
            "STAGERUNNER_NODE_NAME": self.tag,
            "STAGERUNNER_POLL_INTERVAL": "0.5",
            # the restart limit is not under test: chaos kills stages on purpose
            "STAGERUNNER_MAX_RESTARTS": "100000",
            RECORD_ENV: str(self.record),
        })
        with open(self.log_path, "wb") as out:
            self.node = subprocess.Popen([sys.executable, "-m", "stagerunner", "run"], env=env,
                                         stdout=out, stderr=subprocess.STDOUT,
                                         start_new_session=True)
        deadline = time.monotonic() + 60
        while b"node started" not in self.log_path.read_bytes():
            if self.node.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the node did not start (exit {self.node.poll()}); "
                                   f"see {self.log_path}")
            time.sleep(0.1)

    def stages(self) -> tuple[list[int], list[int]]:
        assert self.node is not None
        kids = _children(self.node.pid)
        return ([p for p in kids if "producer" in _cmdline(p)],
                [p for p in kids if "consumer" in _cmdline(p)])

    def stop_node(self) -> int | None:
        assert self.node is not None
        if self.node.poll() is None:
            self.node.send_signal(signal.SIGTERM)
        try:
            return self.node.wait(timeout=90)
        except subprocess.TimeoutExpired:
            self.problems.append("the node did not stop within 90 s of SIGTERM")
            self._kill_everything()
            return None

    def ours(self) -> list[int]:
        """Live processes of this run: anything whose title carries our node name."""
        me = os.getpid()
        return [p for p in _pids() if p != me and self.tag in _cmdline(p) and _alive(p)]

    def _kill_everything(self) -> None:
        """SIGKILL what is provably ours: the node's group and titles with our node name.
        Never a pid merely recorded earlier: it may belong to someone else by now."""
        if self.node is not None and self.node.poll() is None:
            try:
                os.killpg(self.node.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        for pid in self.ours():
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        if self.node is not None:
            try:
                self.node.wait(timeout=10)
            except subprocess.TimeoutExpired:
                pass

    # Load and faults -------------------------------------------------------------------

    def enqueue(self, conn: Any, count: int) -> None:
        import stagerunner

        names, weights = zip(*MIX)
        items, kinds, keys = [], [], []
        for kind in self.rng.choices(names, weights, k=count):
            key = f"t{self.next_key}"
            self.next_key += 1
            items.append((f"stagerunner.chaos:{kind}", [key]))
            kinds.append(kind)
            keys.append(key)
        ids = stagerunner.enqueue_many(items, conn=conn)
        self.kinds.update(zip(ids, kinds))
        self.keys.update(zip(ids, keys))

    def strike(self, conn: Any) -> None:
        producers, consumers = self.stages()
        action = self.rng.choices(["consumer", "forker", "producer", "terminate"],
                                  [4, 1, 1, 3])[0]
        forkers = [f for c in consumers for f in _children(c)]
        if action == "consumer" and consumers:
            os.kill(self.rng.choice(consumers), signal.SIGKILL)
            self.kills["consumer"] += 1
        elif action == "forker" and forkers:
            os.kill(self.rng.choice(forkers), signal.SIGKILL)
            self.kills["forker"] += 1
        elif action == "producer" and producers:
            os.kill(producers[0], signal.SIGKILL)
            self.kills["producer"] += 1
        elif action == "terminate":
            self.terminations += self.terminate_connections(conn)

    def storm(self, conn: Any) -> None:
        assert self.node is not None
        started = time.monotonic()
        next_batch = next_strike = started
        sent = 0.0
        while (now := time.monotonic()) - started < self.seconds:
            if self.node.poll() is not None:
                self.problems.append(f"the node exited with {self.node.returncode} under chaos")
                return
            if now >= next_batch:
                due = self.rate * (now - started) - sent
                if due >= 1:
                    self.enqueue(conn, int(due))
                    sent += int(due)
                next_batch = now + 0.25
            if now >= next_strike and now - started > 1.0:
                self.strike(conn)
                next_strike = now + self.rng.uniform(0.3, 1.7)
            time.sleep(0.05)

    def drain(self, conn: Any, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.node is None or self.node.poll() is not None:
                return
            if not self.unfinished(conn):
                return
            time.sleep(0.5)

    @staticmethod
    def unfinished(conn: Any) -> int:
        from stagerunner import store

        return sum(r["n"] for r in store.count_tasks(conn) if r["status"] in ("waiting", "running"))

    # Checks ----------------------------------------------------------------------------

    def recorded_lines(self) -> list[dict[str, Any]]:
        if not self.record.exists():
            return []
        out = []
        for line in self.record.read_text().splitlines():
            try:
                out.append(json.loads(line))
            except ValueError:
                self.problems.append(f"a torn record line: {line[:80]!r}")
        return out

    def recorded_pids(self) -> dict[int, float]:
        """Job pids that recorded a run -> when they were seen alive (their first line)."""
        seen: dict[int, float] = {}
        for d in self.recorded_lines():
            seen.setdefault(int(d["pid"]), float(d["t"]))
        return seen

    def leaked(self) -> list[int]:
        recorded = [p for p, t in self.recorded_pids().items() if _still_alive(p, t)]
        return sorted(set(self.ours()) | set(recorded))

    def runs(self) -> dict[str, list[Run]]:
        by: dict[tuple[str, int], Run] = {}
        for d in self.recorded_lines():
            k = (d["key"], d["pid"])
            if d["event"] == "start":
                by[k] = Run(d["t"], d["t"], False)
            elif k in by:
                by[k].last = max(by[k].last, d["t"])
                by[k].ended = by[k].ended or d["event"] == "end"
        out: dict[str, list[Run]] = {}
        for (key, _), run in by.items():
            out.setdefault(key, []).append(run)
        return out

    def check(self, conn: Any) -> dict[str, Any]:
        from stagerunner import store

        rows = {r["id"]: r for r in store.list_tasks(conn, limit=2**31 - 1)}
        runs = self.runs()
        statuses = Counter(r["status"] for r in rows.values())
        overlaps = reruns = wrong = 0
        missing = set(self.keys) - set(rows)
        if missing:
            self.problems.append(f"{len(missing)} tasks vanished, e.g. {sorted(missing)[:5]}")
        for tid, r in rows.items():
            key, kind = self.keys.get(tid), self.kinds.get(tid)
            if key is None:
                continue
            mine = sorted(runs.get(key, []), key=lambda x: x.start)
            where = f"task {tid} ({kind}, {key}): status={r['status']} attempts={r['attempts']} " \
                    f"lost={r['lost']} runs={len(mine)} error={r['error_head']!r}"
            if r["status"] not in TERMINAL + ("waiting",):
                self.problems.append(f"not terminal after the stop: {where}")
            if r["attempts"] > r["max_attempts"] + r["lost"]:
                self.problems.append(f"attempts beyond max_attempts + lost: {where}")
            if len(mine) > r["attempts"]:
                reruns += len(mine) - r["attempts"]
                self.problems.append(f"ran more often than it was claimed: {where}")
            for i, a in enumerate(mine):
                for b in mine[i + 1:]:
                    if a.start < b.last and b.start < a.last:
                        overlaps += 1
                        self.problems.append(f"overlapping runs: {where}")
            lost_out = r["status"] == "error" and "lost" in (r["error_head"] or "")
            if r["status"] == "success" and not any(x.ended for x in mine):
                wrong += 1
                self.problems.append(f"success without a finished run: {where}")
            if (kind in ("crash", "sleepy") and r["status"] == "success") or \
               (kind == "ok" and r["status"] not in ("success", "waiting") and not lost_out) or \
               (kind == "crash" and r["status"] == "timeout"):
                wrong += 1
                self.problems.append(f"status does not fit the task: {where}")
        leaked = self.leaked()
        if leaked:
            self.problems.insert(0, "leaked processes: " + ", ".join(
                f"{p} (ppid {(_stat(p) or ['', '?'])[1]}: {_cmdline(p)[:60]!r})" for p in leaked[:10]))
        return {"rows": len(rows), "statuses": statuses, "overlaps": overlaps, "reruns": reruns,
                "wrong": wrong, "leaked": len(leaked)}

    # All of it -------------------------------------------------------------------------

    def run(self) -> tuple[bool, str]:
        started = time.monotonic()
        self.create_database()
        result: dict[str, Any] = {}
        try:
            self.start_node()
            with self._connect() as conn:
                self.storm(conn)
                self.drain(conn, timeout=max(60.0, self.seconds / 5))
                code = self.stop_node()
                if code not in (0, None):
                    self.problems.append(f"the node exited with {code} after SIGTERM")
                time.sleep(0.5)  # let PDEATHSIG'd children finish dying before counting
                result = self.check(conn)
        except Exception as exc:
            self.problems.append(f"harness error: {exc!r}")
        finally:
            self._kill_everything()
        passed = not self.problems
        s = result.get("statuses", Counter())
        line = (f"chaos: {'PASS' if passed else 'FAIL'} {self.seconds:g}s tasks={result.get('rows', 0)} "
                f"success={s['success']} error={s['error']} timeout={s['timeout']} "
                f"waiting={s['waiting']} running={s['running']} "
                f"kills=consumer:{self.kills['consumer']},forker:{self.kills['forker']},"
                f"producer:{self.kills['producer']} "
                f"terminations={self.terminations} overlaps={result.get('overlaps', 0)} "
                f"leaked={result.get('leaked', 0)} reruns={result.get('reruns', 0)} "
                f"wrong={result.get('wrong', 0)} elapsed={time.monotonic() - started:.0f}s")
        if not passed:  # a few of each kind of problem, the kinds in order of appearance
            kinds: dict[str, list[str]] = {}
            for problem in self.problems:
                kinds.setdefault(problem.split(":", 1)[0], []).append(problem)
            for kind, found in kinds.items():
                for problem in found[:5]:
                    print(f"chaos: {problem}", file=sys.stderr)
                if len(found) > 5:
                    print(f"chaos: ... and {len(found) - 5} more: {kind}", file=sys.stderr)
            print(f"chaos: node log and run records kept in {self.workdir}", file=sys.stderr)
        if passed and not self.keep:
            shutil.rmtree(self.workdir, ignore_errors=True)
        if not self.keep:
            self.drop_database()
        return passed, line


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="chaos", description="Run a node under random stage kills and connection "
        "terminations, then check that nothing was lost, run twice at once, or leaked.")
    parser.add_argument("--seconds", type=float, required=True, help="how long to cause chaos")
    parser.add_argument("--dsn", default=os.environ.get("STAGERUNNER_TEST_DATABASE_URL",
                                                        DEFAULT_ADMIN_DSN),
                        help="admin DSN of a server where a database may be created "
                             f"(default {DEFAULT_ADMIN_DSN})")
    parser.add_argument("--consumers", type=int, default=4)
    parser.add_argument("--rate", type=float, default=20.0, help="tasks enqueued per second")
    parser.add_argument("--seed", type=int, help="seed of the chaos (the jobs stay random)")
    parser.add_argument("--keep", action="store_true", help="keep the database and work directory")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    chaos = Chaos(args.dsn, args.seconds, consumers=args.consumers, rate=args.rate,
                  seed=args.seed, keep=args.keep)

    def interrupted(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, interrupted)
    try:
        passed, line = chaos.run()
    except KeyboardInterrupt:
        chaos._kill_everything()
        chaos.drop_database()
        print(f"chaos: FAIL interrupted after {chaos.seconds:g}s", flush=True)
        return 1
    print(line, flush=True)
    return 0 if passed else 1


if __name__ == "__main__":
    sys.exit(main())
