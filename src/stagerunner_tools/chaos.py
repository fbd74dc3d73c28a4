"""Chaos run: one to three nodes on one database under a steady stream of mixed tasks while
faults are injected at random; then the runner's invariants are checked.

    bin/chaos --seconds N [--nodes 1-3] [--private | --no-private] [--dsn ADMIN_DSN]
              [--consumers C] [--rate R] [--seed S] [--faults KIND,...] [--keep]

It creates its own database, on a private PostgreSQL server it starts for the run
(``--private``, the default with more than one node: the ``pg-restart`` fault needs a
server of its own) or on the admin DSN's server (default
postgresql://postgres@127.0.0.1:5432/postgres), and a role of its own for hostile input.
It starts the nodes (``python -m stagerunner run`` with
STAGERUNNER_TASK_MODULES=stagerunner_tools.chaos_tasks), each with other settings: node 1
C consumers, a 1 s heartbeat and a 3 s lease (the defaults); node 2 C-1 consumers, 0.5 s
and 2 s; node 3 C-2 consumers, 1.5 s and 5 s. For N seconds it:

- enqueues R tasks a second, a mix of ``ok``, ``flaky`` (raises sometimes), ``sleepy``
  (sleeps past its deadline), ``crash`` (``os._exit``), ``slow`` (alive for about a second:
  a frozen or rescued node is likely to hold one) and, rarely, ``killer`` (SIGKILLs its
  own consumer half of the time);
- every 0.3-1.7 s injects a fault (``chaos_faults``: kill, terminate, freeze, notify,
  lock, migrate, pg-restart), each kind once first, then at random by weight.

Then it undoes the lasting faults, lets the nodes drain, stops them all with SIGTERM and
checks (``chaos_checks``):

- nothing lost: every task is terminal, or ``waiting`` for a retry (none ``running``);
- attempts as documented: ``attempts <= max_attempts + lost``, and every run the tasks
  recorded was a claim (runs of a task <= its attempts);
- no overlapping runs of one task (each run appends start/tick/end lines to one file,
  whichever node ran it), frozen nodes and rescues included;
- statuses fit the task (``crash`` never succeeds, ``sleepy`` never succeeds, a success
  ran to its end), and no task ``cancelled`` (nobody cancels; forged NOTIFYs must not);
- no stage crashed: no crash or protocol-error event, no traceback, no restart that a
  fault does not account for; ``hostile crashes`` are those within 1 s of a hostile NOTIFY;
- every migration exited 0; no leaked processes; every node exited 0 on SIGTERM.

It prints ONE verdict line and exits 0 on PASS, 1 on FAIL (details go to stderr, and the
work directory with the node logs and the run records is kept).
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import signal
import sys
import tempfile
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from stagerunner_tools import chaos_checks, dbs
from stagerunner_tools.chaos_faults import KINDS, ChaosNode, Faults, Link
from stagerunner_tools.chaos_tasks import MIX, RECORD_ENV
from stagerunner_tools.nodes import NodeProcess, node_env
from stagerunner_tools.pgserver import PrivatePG
from stagerunner_tools.runs import Records

TASKS = "stagerunner_tools.chaos_tasks"
# (consumers less than --consumers, heartbeat interval, lease) of nodes 1, 2, 3: nodes
# with different settings must never rescue each other's live tasks
PROFILES = [(0, 1.0, 3.0), (1, 0.5, 2.0), (2, 1.5, 5.0)]


@dataclass
class Chaos:
    admin_dsn: str
    seconds: float
    nodes: int = 3
    private: bool = True
    consumers: int = 4
    rate: float = 20.0
    seed: int | None = None
    kinds: tuple[str, ...] = KINDS
    keep: bool = False
    problems: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        if self.seed is None:
            self.seed = random.SystemRandom().randrange(1_000_000)
        self.rng = random.Random(self.seed)
        self.tag = f"chaos-{os.getpid()}-{self.rng.getrandbits(24):06x}"
        self.dbname = self.tag.replace("-", "_")
        self.role = f"{self.dbname}_hostile"
        self.workdir = Path(tempfile.mkdtemp(prefix=f"stagerunner-{self.tag}-"))
        self.records = Records(self.workdir / "runs.jsonl")
        self.server: PrivatePG | None = None
        self.members = [ChaosNode(f"{self.tag}-n{i + 1}", max(1, self.consumers - less), hb, lease)
                        for i, (less, hb, lease) in enumerate(PROFILES[:self.nodes])]
        self.faults: Faults | None = None
        self.kinds_of: dict[int, str] = {}  # task id -> task function
        self.keys: dict[int, str] = {}      # task id -> key it records under
        self.next_key = 0

    # The database ----------------------------------------------------------------------

    def set_up_database(self) -> None:
        if self.private:
            self.server = PrivatePG.create()
            self.server.start()
            self.admin_dsn = self.server.admin_dsn
        self.dsn = dbs.create_database(self.admin_dsn, self.dbname, schema=True)
        hostile_dsn = None
        try:  # a role of its own for the forged NOTIFYs: nothing but CONNECT (PUBLIC's)
            with dbs.connect_retrying(self.admin_dsn) as admin:
                admin.execute(f'CREATE ROLE "{self.role}" LOGIN')
            hostile_dsn = dbs.with_user(self.dsn, self.role)
            dbs.connect_retrying(hostile_dsn, timeout=3).close()
        except Exception as exc:
            print(f"chaos: hostile NOTIFYs come from the admin role ({exc})", file=sys.stderr)
            hostile_dsn = None
        self.faults = Faults(self.members, self.dsn, self.dbname, self.workdir, self.rng,
                             server=self.server, hostile_dsn=hostile_dsn, enabled=self.kinds)

    def tear_down_database(self) -> None:
        if self.keep:
            if self.server is not None:
                self.server.stop()
                print(f"chaos: private server kept in {self.server.data} (stopped)",
                      file=sys.stderr)
            return
        try:
            dbs.drop_database(self.admin_dsn, self.dbname)
            with dbs.connect_retrying(self.admin_dsn) as admin:
                admin.execute(f'DROP ROLE IF EXISTS "{self.role}"')
        except Exception as exc:  # leave it; say so
            print(f"chaos: could not drop database {self.dbname} or role {self.role}: {exc}",
                  file=sys.stderr)
        if self.server is not None:
            self.server.destroy()

    # The nodes -------------------------------------------------------------------------

    def start_nodes(self) -> None:
        for node in self.members:
            env = node_env(self.dsn, TASKS, consumers=node.consumers, node_name=node.name,
                           heartbeat_interval=node.heartbeat, node_expiry=node.expiry,
                           log_format="json",
                           # the restart limit is not under test: chaos kills stages on purpose
                           max_restarts=100000)
            env[RECORD_ENV] = str(self.records.path)
            node.process = NodeProcess(env, self.workdir / f"{node.name}.log")
        for node in self.members:
            assert node.process is not None
            if not node.process.wait_started(timeout=60):
                raise RuntimeError(f"node {node.name} did not start (exit "
                                   f"{node.process.proc.poll()}); see {node.process.log_path}")

    def stop_nodes(self) -> int:
        """SIGTERM every node at once; how many exited 0."""
        for node in self.members:
            if node.process is not None and node.process.proc.poll() is None:
                node.process.proc.send_signal(signal.SIGTERM)
        clean = 0
        for node in self.members:
            assert node.process is not None
            try:  # wait, no second SIGTERM: that one would find the default handler back
                code = node.process.proc.wait(timeout=90)
            except Exception:
                self.problems.append(f"node {node.name} did not stop within 90 s of SIGTERM")
                node.process.kill()
                continue
            if code == 0:
                clean += 1
            else:
                self.problems.append(f"node {node.name} exited with {code} after SIGTERM")
        return clean

    def kill_everything(self) -> None:
        """SIGKILL what is provably ours: the nodes' trees and titles with our tag. Never a
        pid merely recorded earlier: it may belong to someone else by now."""
        for node in self.members:
            if node.process is not None:
                node.process.kill()
        for pid in chaos_checks.leaked(self.tag, {}):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass

    # Load ------------------------------------------------------------------------------

    def enqueue(self, link: Link, count: int) -> bool:
        """Enqueue `count` tasks of the mix; False if the database refused (a held lock, a
        restart): the next batch makes up for it."""
        import stagerunner

        names, weights = zip(*MIX)
        kinds = self.rng.choices(names, weights, k=count)
        keys = [f"t{self.next_key + i}" for i in range(count)]
        self.next_key += count  # never reused: a failed INSERT may have committed
        items = [(f"{TASKS}:{kind}", [key]) for kind, key in zip(kinds, keys)]
        ids = link.attempt(lambda conn: stagerunner.enqueue_many(items, conn=conn))
        if ids is None:
            return False
        self.kinds_of.update(zip(ids, kinds))
        self.keys.update(zip(ids, keys))
        return True

    def storm(self, link: Link) -> None:
        assert self.faults is not None
        started = time.monotonic()
        next_batch = next_strike = started
        sent = 0
        while (now := time.monotonic()) - started < self.seconds:
            if self.exited_under_chaos():
                return
            if now >= next_batch:
                due = int(self.rate * (now - started) - sent)
                if due >= 1 and self.enqueue(link, due):
                    sent += due
                next_batch = now + 0.25
            if now >= next_strike and now - started > 1.0 and self.kinds:
                self.faults.strike()
                next_strike = time.monotonic() + self.rng.uniform(0.3, 1.7)
            self.faults.tick()
            time.sleep(0.05)

    def exited_under_chaos(self) -> bool:
        gone = [n for n in self.members if n.process is not None and n.process.proc.poll() is not None]
        for node in gone:
            assert node.process is not None
            self.problems.append(f"node {node.name} exited with {node.process.proc.returncode} "
                                 f"under chaos: {node.process.log_tail(5)}")
        return bool(gone)

    def drain(self, link: Link, timeout: float) -> None:
        from stagerunner import opstore

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if any(not n.alive() for n in self.members):
                return
            live = link.attempt(lambda c: sum(r["n"] for r in opstore.count_live_tasks(c)), 1)
            if not live:
                return
            time.sleep(0.5)

    # Checks ----------------------------------------------------------------------------

    def check(self) -> dict[str, Any]:
        from stagerunner import opstore

        assert self.faults is not None
        with dbs.connect_retrying(self.dsn, application_name="stagerunner-chaos") as conn:
            rows = {r["id"]: r for r in opstore.list_tasks(conn, limit=2**31 - 1)}
            # an INSERT whose reply a restart or a termination swallowed still committed:
            # its tasks' keys and kinds are in their rows (name and first argument)
            for tid, name, key in conn.execute(
                    "SELECT id, name, args->>0 FROM stagerunner.tasks WHERE NOT id = ANY(%s)",
                    [list(self.keys)]).fetchall():
                self.keys[tid], self.kinds_of[tid] = key, name.rpartition(":")[2]
        torn = self.records.lines()[1]
        if torn:
            self.problems.append(f"torn record lines, e.g. {torn[0][:80]!r}")
        tasks = chaos_checks.check_tasks(rows, self.keys, self.kinds_of, self.records.runs(),
                                         self.problems)
        logs = {n.name: n.process.log() for n in self.members if n.process is not None}
        notified = [t for t, kind in self.faults.timeline if kind == "notify"]
        found = chaos_checks.check_logs(logs, notified)
        self.problems += [f"stage crash: {c}" for c in found.crashes]
        self.problems += [f"hostile crash: {c}" for c in found.hostile]
        self.problems += self.faults.problems
        leaked = chaos_checks.leaked(self.tag, self.records.pids())
        if leaked:
            self.problems.insert(0, "leaked processes: " + chaos_checks.describe(leaked))
        return {"tasks": tasks, "logs": found, "leaked": len(leaked)}

    # All of it -------------------------------------------------------------------------

    def run(self) -> tuple[bool, str]:
        started = time.monotonic()
        result: dict[str, Any] = {}
        stopped = 0
        try:
            self.set_up_database()
            assert self.faults is not None
            self.start_nodes()
            link = Link(self.dsn, application_name="stagerunner-chaos",
                        options="-c lock_timeout=300ms -c statement_timeout=5s")
            try:
                self.storm(link)
            finally:
                self.faults.settle()  # thaw, release, wait for the migration
            self.drain(link, timeout=max(60.0, self.seconds / 5))
            link.drop()
            stopped = self.stop_nodes()
            time.sleep(0.5)  # let PDEATHSIG'd children finish dying before counting
            result = self.check()
        except Exception as exc:
            traceback.print_exc()
            self.problems.append(f"harness error: {exc!r}")
        finally:
            self.kill_everything()
        passed = not self.problems
        line = self.verdict(passed, result, stopped, time.monotonic() - started)
        if not passed:
            self.report_problems()
        if passed and not self.keep:
            shutil.rmtree(self.workdir, ignore_errors=True)
        self.tear_down_database()
        return passed, line

    def verdict(self, passed: bool, result: dict[str, Any], stopped: int, elapsed: float) -> str:
        tasks = result.get("tasks", chaos_checks.TaskReport())
        logs = result.get("logs", chaos_checks.LogReport())
        f = self.faults
        s = tasks.statuses
        faults = ",".join(f"{k}:{f.counts[k] if f else 0}" for k in self.kinds)
        kills = ",".join(f"{k}:{f.kills[k] if f else 0}" for k in ("consumer", "forker", "producer", "server"))
        return (f"chaos: {'PASS' if passed else 'FAIL'} {self.seconds:g}s seed={self.seed} "
                f"nodes={self.nodes} private={'yes' if self.server else 'no'} "
                f"tasks={tasks.rows} lost={tasks.lost} overlaps={tasks.overlaps} "
                f"leaked={result.get('leaked', 0)} hostile_crashes={len(logs.hostile)} "
                f"crashes={len(logs.crashes)} cancelled={tasks.cancelled} reruns={tasks.reruns} "
                f"wrong={tasks.wrong} stopped={stopped}/{self.nodes} "
                f"success={s['success']} error={s['error']} timeout={s['timeout']} "
                f"waiting={s['waiting']} running={s['running']} faults={faults} kills={kills} "
                f"sessions={f.details['sessions'] if f else 0} restarts={logs.restarts} "
                f"elapsed={elapsed:.0f}s")

    def report_problems(self) -> None:
        """A few of each kind of problem, the kinds in order of appearance, on stderr."""
        kinds: dict[str, list[str]] = {}
        for problem in self.problems:
            kinds.setdefault(problem.split(":", 1)[0], []).append(problem)
        for kind, found in kinds.items():
            for problem in found[:5]:
                print(f"chaos: {problem}", file=sys.stderr)
            if len(found) > 5:
                print(f"chaos: ... and {len(found) - 5} more: {kind}", file=sys.stderr)
        print(f"chaos: node logs and run records kept in {self.workdir}", file=sys.stderr)

    def details(self) -> str:
        """The faults' details (lock kinds, freezes past the lease, migration times)."""
        if self.faults is None:
            return ""
        return " ".join(f"{k.replace(' ', '-')}={v}" for k, v in sorted(self.faults.details.items()))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="chaos", description="Run nodes under random faults (stage kills, frozen nodes, "
        "terminated connections, hostile NOTIFYs, held locks, migrations, PostgreSQL "
        "restarts), then check that nothing was lost, run twice at once, crashed or leaked.")
    parser.add_argument("--seconds", type=float, required=True, help="how long to cause chaos")
    parser.add_argument("--nodes", type=int, default=3, choices=[1, 2, 3],
                        help="nodes on the one database, each with other settings (default 3)")
    parser.add_argument("--private", action=argparse.BooleanOptionalAction, default=None,
                        help="run on a private PostgreSQL server started for the run, which "
                             "the pg-restart fault restarts (default: with more than one node)")
    parser.add_argument("--dsn", default=os.environ.get("STAGERUNNER_TEST_DATABASE_URL",
                                                        dbs.DEFAULT_ADMIN_DSN),
                        help="admin DSN of a server where a database may be created, without "
                             f"--private (default {dbs.DEFAULT_ADMIN_DSN})")
    parser.add_argument("--consumers", type=int, default=4,
                        help="consumers of node 1; nodes 2 and 3 get one and two fewer")
    parser.add_argument("--rate", type=float, default=20.0, help="tasks enqueued per second")
    parser.add_argument("--seed", type=int, help="seed of the chaos (the jobs stay random)")
    parser.add_argument("--faults", default=",".join(KINDS),
                        help=f"the fault kinds to inject (default all: {','.join(KINDS)})")
    parser.add_argument("--keep", action="store_true",
                        help="keep the database, the work directory and the private server")
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    kinds = tuple(k for k in args.faults.split(",") if k)
    if set(kinds) - set(KINDS):
        parser.error(f"unknown fault kinds: {sorted(set(kinds) - set(KINDS))}")
    private = args.nodes > 1 if args.private is None else args.private
    chaos = Chaos(args.dsn, args.seconds, nodes=args.nodes, private=private,
                  consumers=args.consumers, rate=args.rate, seed=args.seed, kinds=kinds,
                  keep=args.keep)

    def interrupted(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, interrupted)
    try:
        passed, line = chaos.run()
    except KeyboardInterrupt:
        chaos.kill_everything()
        if chaos.faults is not None:
            chaos.faults.settle()
        chaos.tear_down_database()
        print(f"chaos: FAIL interrupted after {chaos.seconds:g}s", flush=True)
        return 1
    print(f"chaos: details {chaos.details()}", file=sys.stderr)
    print(line, flush=True)
    return 0 if passed else 1


if __name__ == "__main__":
    sys.exit(main())
