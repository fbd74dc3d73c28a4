"""Chaos run: one node under a steady stream of mixed tasks while its stages are SIGKILLed
and its database connections terminated at random; then the runner's invariants are checked.

    bin/chaos --seconds N [--dsn ADMIN_DSN] [--consumers C] [--rate R] [--seed S] [--keep]

It creates its own database from the admin DSN (default
postgresql://postgres@127.0.0.1:5432/postgres), runs ``python -m stagerunner run`` against
it with STAGERUNNER_TASK_MODULES=stagerunner_tools.chaos_tasks, and for N seconds:

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

The tasks live in ``chaos_tasks`` (consumers import them); the process, database and
run-record helpers are the support library's (``procfs``, ``dbs``, ``nodes``, ``runs``).
"""

from __future__ import annotations

import argparse
import os
import random
import secrets
import shutil
import signal
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from stagerunner.protocol import TERMINAL
from stagerunner_tools import dbs, procfs
from stagerunner_tools.chaos_tasks import MIX, RECORD_ENV
from stagerunner_tools.nodes import NodeProcess, node_env
from stagerunner_tools.runs import Records, Run, overlap

TASKS = "stagerunner_tools.chaos_tasks"


# The run -------------------------------------------------------------------------------------

@dataclass
class Chaos:
    admin_dsn: str
    seconds: float
    consumers: int = 4
    rate: float = 20.0
    seed: int | None = None
    keep: bool = False
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
        self.dsn = dbs.with_dbname(self.admin_dsn, self.dbname)
        self.workdir = Path(tempfile.mkdtemp(prefix=f"stagerunner-{self.tag}-"))
        self.records = Records(self.workdir / "runs.jsonl")
        self.node: NodeProcess | None = None
        self.next_key = 0

    # The node --------------------------------------------------------------------------

    def start_node(self) -> None:
        env = node_env(self.dsn, TASKS, consumers=self.consumers, node_name=self.tag,
                       # the restart limit is not under test: chaos kills stages on purpose
                       max_restarts=100000)
        env[RECORD_ENV] = str(self.records.path)
        self.node = NodeProcess(env, self.workdir / "node.log")
        if not self.node.wait_started(timeout=60):
            raise RuntimeError(f"the node did not start (exit {self.node.proc.poll()}); "
                               f"see {self.node.log_path}")

    def stop_node(self) -> int | None:
        assert self.node is not None
        try:
            return self.node.stop(timeout=90)
        except Exception:
            self.problems.append("the node did not stop within 90 s of SIGTERM")
            self._kill_everything()
            return None

    def ours(self) -> list[int]:
        """Live processes of this run: anything whose title carries our node name."""
        me = os.getpid()
        return [p for p in procfs.pids()
                if p != me and self.tag in procfs.cmdline(p) and procfs.alive(p)]

    def _kill_everything(self) -> None:
        """SIGKILL what is provably ours: the node's tree and titles with our node name.
        Never a pid merely recorded earlier: it may belong to someone else by now."""
        if self.node is not None:
            self.node.kill()
        for pid in self.ours():
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass

    # Load and faults -------------------------------------------------------------------

    def enqueue(self, conn: Any, count: int) -> None:
        import stagerunner

        names, weights = zip(*MIX)
        items, kinds, keys = [], [], []
        for kind in self.rng.choices(names, weights, k=count):
            key = f"t{self.next_key}"
            self.next_key += 1
            items.append((f"{TASKS}:{kind}", [key]))
            kinds.append(kind)
            keys.append(key)
        ids = stagerunner.enqueue_many(items, conn=conn)
        self.kinds.update(zip(ids, kinds))
        self.keys.update(zip(ids, keys))

    def strike(self, conn: Any) -> None:
        assert self.node is not None
        producer, consumers = self.node.stages()
        action = self.rng.choices(["consumer", "forker", "producer", "terminate"],
                                  [4, 1, 1, 3])[0]
        forkers = [f for c in consumers for f in procfs.children(c)]
        if action == "consumer" and consumers:
            os.kill(self.rng.choice(consumers), signal.SIGKILL)
            self.kills["consumer"] += 1
        elif action == "forker" and forkers:
            os.kill(self.rng.choice(forkers), signal.SIGKILL)
            self.kills["forker"] += 1
        elif action == "producer" and producer:
            os.kill(producer, signal.SIGKILL)
            self.kills["producer"] += 1
        elif action == "terminate":
            self.terminations += dbs.terminate_node_sessions(conn, self.dbname)

    def storm(self, conn: Any) -> None:
        assert self.node is not None
        started = time.monotonic()
        next_batch = next_strike = started
        sent = 0.0
        while (now := time.monotonic()) - started < self.seconds:
            if self.node.proc.poll() is not None:
                self.problems.append(f"the node exited with {self.node.proc.returncode} under chaos")
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
            if self.node is None or self.node.proc.poll() is not None:
                return
            if not self.unfinished(conn):
                return
            time.sleep(0.5)

    @staticmethod
    def unfinished(conn: Any) -> int:
        from stagerunner import opstore

        return sum(r["n"] for r in opstore.count_live_tasks(conn))

    # Checks ----------------------------------------------------------------------------

    def leaked(self) -> list[int]:
        recorded = [p for p, t in self.records.pids().items() if procfs.alive_since(p, t)]
        return sorted(set(self.ours()) | set(recorded))

    def check(self, conn: Any) -> dict[str, Any]:
        from stagerunner import opstore

        rows = {r["id"]: r for r in opstore.list_tasks(conn, limit=2**31 - 1)}
        runs = self.records.runs()
        torn = self.records.lines()[1]
        if torn:
            self.problems.append(f"torn record lines, e.g. {torn[0][:80]!r}")
        statuses = Counter(r["status"] for r in rows.values())
        overlaps = reruns = wrong = 0
        missing = set(self.keys) - set(rows)
        if missing:
            self.problems.append(f"{len(missing)} tasks vanished, e.g. {sorted(missing)[:5]}")
        for tid, r in rows.items():
            key, kind = self.keys.get(tid), self.kinds.get(tid)
            if key is None:
                continue
            mine: list[Run] = runs.get(key, [])
            where = f"task {tid} ({kind}, {key}): status={r['status']} attempts={r['attempts']} " \
                    f"lost={r['lost']} runs={len(mine)} error={r['error_head']!r}"
            if r["status"] not in (*TERMINAL, "waiting"):
                self.problems.append(f"not terminal after the stop: {where}")
            if r["attempts"] > r["max_attempts"] + r["lost"]:
                self.problems.append(f"attempts beyond max_attempts + lost: {where}")
            if len(mine) > r["attempts"]:
                reruns += len(mine) - r["attempts"]
                self.problems.append(f"ran more often than it was claimed: {where}")
            for i, a in enumerate(mine):
                for b in mine[i + 1:]:
                    if overlap(a, b) > 0:
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
                f"{p} (ppid {procfs.ppid_of(p)}: {procfs.cmdline(p)[:60]!r})" for p in leaked[:10]))
        return {"rows": len(rows), "statuses": statuses, "overlaps": overlaps, "reruns": reruns,
                "wrong": wrong, "leaked": len(leaked)}

    # All of it -------------------------------------------------------------------------

    def run(self) -> tuple[bool, str]:
        started = time.monotonic()
        dbs.create_database(self.admin_dsn, self.dbname, schema=True)
        result: dict[str, Any] = {}
        try:
            self.start_node()
            with dbs.connect_retrying(self.dsn, application_name="stagerunner-chaos") as conn:
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

    def drop_database(self) -> None:
        try:
            dbs.drop_database(self.admin_dsn, self.dbname)
        except Exception as exc:  # leave it; say so
            print(f"chaos: could not drop database {self.dbname}: {exc}", file=sys.stderr)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="chaos", description="Run a node under random stage kills and connection "
        "terminations, then check that nothing was lost, run twice at once, or leaked.")
    parser.add_argument("--seconds", type=float, required=True, help="how long to cause chaos")
    parser.add_argument("--dsn", default=os.environ.get("STAGERUNNER_TEST_DATABASE_URL",
                                                        dbs.DEFAULT_ADMIN_DSN),
                        help="admin DSN of a server where a database may be created "
                             f"(default {dbs.DEFAULT_ADMIN_DSN})")
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
