"""The project's benchmark: ``bin/bench [options]`` (``python -m stagerunner_tools.bench``).

Every number is the MEDIAN of ``--runs`` runs (default 3); the runs of the different
measurements are interleaved (run 1 of everything, then run 2 of everything, ...), so a
noisy minute on this 2-core machine spreads over all of them instead of spoiling one.
The table prints min / median / max per metric; the JSON (``--json PATH``, otherwise
``bench-results/bench-<timestamp>.json``) also holds every run's raw value.

The bench works in its own database ``bench_<pid>``, created from the admin DSN
(``--dsn``, default postgresql://postgres@127.0.0.1:5432/postgres), filled with
``migrations.install_schema`` and dropped at the end. Between measurements the task and node
tables are truncated while no node runs. Only loopback is used. Every node is a
``python -m stagerunner run`` subprocess in its own session; it is stopped with SIGTERM
and waited for, and on any error (or a signal to the bench) the whole process tree is
SIGKILLed. Every loop is bounded in time and count.

Measurements (``--only`` takes the names in brackets):

1. [enqueue_bulk] ``stagerunner.enqueue_many([...], conn=conn)`` of N no-op tasks
   (``--tasks``, default 20000) in one call on an autocommit connection; tasks/s over
   the wall time of the call (client-side validation included).
2. [enqueue_single] ``stagerunner.enqueue(name, [], conn=conn)`` on an autocommit
   connection, one statement and commit per task, 2000 tasks; tasks/s.
2b. [enqueue_async] the same two from asyncio on a psycopg ``AsyncConnection``
   (autocommit): ``await stagerunner.aenqueue_many([...], conn=aconn)`` of N tasks, then
   ``await stagerunner.aenqueue(name, [], conn=aconn)`` one at a time, 2000 tasks; tasks/s.
3. [drain] N no-op tasks (``--drain-tasks``, default 5000) are enqueued, then a node is
   started (STAGERUNNER_CONSUMERS=C, default = cores; task module
   ``stagerunner_tools.bench_tasks``; log level warning). Rate = successes / (max(finished_at)
   - min(claimed_at)), both database timestamps, so node start-up is excluded (it is
   reported separately as Popen -> first claim). Modes: default (what ships: a fresh
   job child per job, stdlib multiprocessing, prefetch 8), the same with
   STAGERUNNER_PROCESS_LIBRARY=multiprocess, and child reuse
   (STAGERUNNER_CHILD_REUSE=100, whose default prefetch is 32). For the default and reuse modes the CPU spent per task is split by
   role: once the node is claiming, the CPU time of the supervisor, the producer, the
   consumers, their fork helpers and the node's PostgreSQL backends (pg_stat_activity, application_name
   'stagerunner') is read (own time from /proc/PID/schedstat in ns, plus reaped
   children's cutime+cstime from /proc/PID/stat, which is where the fork helpers' job
   children land), and again when the last task is done, divided by the tasks finished
   in between. PostgreSQL's background writers are not counted. The machine
   has 2 cores, so 2000 / total CPU ms per task bounds the rate from CPU alone.
4. [fork] The fork ceiling: C processes spawned with the default library's spawn
   context (stdlib multiprocessing), each having imported stagerunner.consumer and loaded the
   bench task module first, so their RSS (reported) is close to a consumer's, fork bare
   children flat out for ~2 s (child: ``os._exit(0)``; parent: ``waitpid``). A fork's
   cost grows with the parent's RSS (here ~5 % per extra MiB), so the probers import
   nothing else: their target is the builtin ``exec`` of a source string, and this
   module hides itself from the spawn preparation when run as __main__. Reported:
   total children/s (sum of each prober's count / its own elapsed time) and, per run,
   drain(default) / fork ceiling (issue target: >= 0.85) and the same
   ratio for child reuse.
5. [latency] With a default-mode node running and idle, one task at a time is
   enqueued at 200/s for ~5 s (single-row insert + commit each, paced on the monotonic
   clock; the achieved rate is reported). The task returns ``time.time()`` when it
   starts in its job child; latency = result - extract(epoch from created_at). p50/p99 ms.
6. [deadline] A node with STAGERUNNER_JOB_TIMEOUT=0.2 gets 10*C tasks that sleep
   forever (max_attempts=1), so every consumer is busy and each task is killed at its
   deadline. The consumer records each attempt's measured runtime in the ``errors``
   jsonb (``runtime_ms``); overshoot = runtime_ms - 200. p50/p99 ms.
7. [rss] VmRSS (from /proc/PID/status) per role, sampled every 0.5 s during the
   default-mode drains (when [drain] runs; the default library for every role, and
   multiprocess for the consumers) and once on the idle node. Roles, without relying on process
   titles (setproctitle is optional): the supervisor is the pid we started; the
   producer is the pid written into stagerunner.nodes (``beat_node`` runs in the
   producer), checked to be a child of the supervisor; a supervisor child whose cmdline
   names ``resource_tracker`` is the library's resource tracker (ignored); every other
   supervisor child is a consumer (the idle node's readiness check requires exactly C of
   them, each with its fork helper holding a pre-forked job child); a consumer's child
   is its fork helper, and the fork helpers' descendants are job children. Consumer,
   fork helper and job values are medians over those processes; each metric is the
   median over samples.
8. [pickle] Process-library cost, in this process: 100k small messages (an
   ``Outcome``) through a duplex ``Pipe`` of each library's spawn context, sent and
   received in batches of 64 in one thread: (a) ``Connection.send``/``recv`` (pickled
   by multiprocess's dill pickler or the stdlib pickler) versus (b) ``send_bytes`` of
   ``protocol.encode(outcome)`` and ``protocol.decode(recv_bytes())`` (what the runner
   does). µs per message, encode+send+receive+decode. Plus VmRSS of a freshly spawned,
   idle process of each library (the target only waits on its pipe).
10. [scale] (listed here out of order) K tasks (15,000) are drained in child-reuse mode
   from a 20,000-row backlog and from a --scale-rows (1,000,000) backlog inserted with
   generate_series; rates from database timestamps, their ratio (target >= 0.9), the
   producer's RSS growth across the large drain, and EXPLAIN ANALYZE of the claim on
   the large table (in a rolled-back transaction), printed as a note.
11. [cluster] The same drain with 1, 2 and 3 nodes on one database: drain rate, the
   nodes' PostgreSQL CPU per task, and claim conflicts (lock waits); see
   ``stagerunner_tools.bench_cluster`` for how each is measured and defined.
9. [idle] A node with no work (after start-up settles) for ~3 s: CPU time of every
   process of the node tree (supervisor, producer, consumers, fork helpers, pre-forked job children,
   resource tracker) over wall time, in percent of one core. CPU time comes from
   /proc/PID/schedstat (nanoseconds; /proc/PID/stat's 10 ms ticks would read an idle
   node as 0). The CPU of the node's PostgreSQL backends (application_name
   'stagerunner') is reported beside it.

``--quick`` shrinks everything (N=2000, 500 to drain, one run) for a smoke test.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from stagerunner_tools import procfs
from stagerunner_tools.bench_cluster import METRICS as CLUSTER_METRICS
from stagerunner_tools.bench_cluster import cluster
from stagerunner_tools.bench_nodes import (TASK_MODULE, BenchDB, BenchError, DrainWatch, Node,
                                           role_rss_mib)
from stagerunner_tools.stats import (cpu_percent, format_value, kib_to_mib, median, percentile,
                                     rate, ratio, summarize)

if TYPE_CHECKING:
    from pathlib import Path

NOOP = f"{TASK_MODULE}:noop"
STARTED_AT = f"{TASK_MODULE}:started_at"
SLEEP_FOREVER = f"{TASK_MODULE}:sleep_forever"
DEFAULT_DSN = "postgresql://postgres@127.0.0.1:5432/postgres"
LIBRARIES = ("multiprocess", "multiprocessing")
MEASUREMENTS = ("enqueue_bulk", "enqueue_single", "enqueue_async", "drain", "fork", "latency",
                "deadline", "status", "prune", "rss", "pickle", "idle", "scale", "cluster")
DRAIN_MODES = (  # (label, extra node environment); "default" is what ships
    ("default", {}),
    ("default_multiprocess", {"STAGERUNNER_PROCESS_LIBRARY": "multiprocess"}),
    ("reuse100", {"STAGERUNNER_CHILD_REUSE": "100"}),
)
CPU_MODES = {"default": "default", "reuse100": "reuse"}
FORK_CAP = 2_000_000  # upper bound on forks per prober, whatever the clock says
DEADLINE_S = 0.2
RATIO_TARGET = 0.85

# name -> (unit, description); the table follows this order.
METRICS: dict[str, tuple[str, str]] = {
    "enqueue_bulk_rate": ("tasks/s", "enqueue_many of N tasks, one call"),
    "enqueue_single_rate": ("tasks/s", "enqueue one at a time, autocommit"),
    "enqueue_async_bulk_rate": ("tasks/s", "aenqueue_many of N tasks, AsyncConnection"),
    "enqueue_async_single_rate": ("tasks/s", "aenqueue one at a time, AsyncConnection"),
    "drain_default": ("tasks/s", "drain, fresh child per job (defaults: multiprocessing)"),
    "drain_default_multiprocess": ("tasks/s", "drain, fresh child per job, multiprocess"),
    "drain_reuse100": ("tasks/s", "drain, CHILD_REUSE=100 (default prefetch 32)"),
    "scale_drain_small": ("tasks/s", "reuse drain, first K tasks of a 20,000-row backlog"),
    "scale_drain_large": ("tasks/s", "reuse drain, first K tasks of a --scale-rows backlog"),
    "scale_large_over_small": ("ratio", "large / small backlog drain (target >= 0.9)"),
    "status_p50_ms": ("ms", "`status` with --status-rows finished rows, p50 (target <= 100)"),
    "scrape_p50_ms": ("ms", "a metrics scrape's queries, same table, p50 (target <= 100)"),
    "prune_rate": ("rows/s", "retention: finished rows deleted per second, one pruner"),
    "scale_producer_rss_growth_mib": ("MiB", "producer VmRSS max - min, large-backlog drain"),
    "drain_startup_s": ("s", "node Popen -> first claim (default mode)"),
    "cpu_ms_per_task_default_supervisor": ("CPU ms/task", "drain default: supervisor"),
    "cpu_ms_per_task_default_producer": ("CPU ms/task", "drain default: producer"),
    "cpu_ms_per_task_default_consumers": ("CPU ms/task", "drain default: consumers"),
    "cpu_ms_per_task_default_forkers": ("CPU ms/task", "drain default: fork helpers + jobs"),
    "cpu_ms_per_task_default_postgres": ("CPU ms/task", "drain default: the node's PG backends"),
    "cpu_ms_per_task_default_total": ("CPU ms/task", "drain default: all of the above"),
    "cpu_ms_per_task_reuse_supervisor": ("CPU ms/task", "drain reuse100: supervisor"),
    "cpu_ms_per_task_reuse_producer": ("CPU ms/task", "drain reuse100: producer"),
    "cpu_ms_per_task_reuse_consumers": ("CPU ms/task", "drain reuse100: consumers"),
    "cpu_ms_per_task_reuse_forkers": ("CPU ms/task", "drain reuse100: fork helpers + jobs"),
    "cpu_ms_per_task_reuse_postgres": ("CPU ms/task", "drain reuse100: the node's PG backends"),
    "cpu_ms_per_task_reuse_total": ("CPU ms/task", "drain reuse100: all of the above"),
    "fork_ceiling": ("children/s", "C probers forking bare children"),
    "fork_probe_rss_mib": ("MiB", "VmRSS of one fork prober (median)"),
    "drain_over_fork": ("ratio", f"drain default / fork ceiling (target >= {RATIO_TARGET})"),
    "drain_reuse_over_fork": ("ratio", "drain reuse100 / fork ceiling"),
    "latency_p50_ms": ("ms", "enqueue -> job start, p50"),
    "latency_p99_ms": ("ms", "enqueue -> job start, p99"),
    "latency_enqueue_rate": ("tasks/s", "achieved trickle rate (asked 200/s)"),
    "deadline_overshoot_p50_ms": ("ms", "runtime_ms - 200 at a 0.2 s deadline, p50"),
    "deadline_overshoot_p99_ms": ("ms", "runtime_ms - 200 at a 0.2 s deadline, p99"),
    "rss_supervisor_drain_mib": ("MiB", "supervisor VmRSS while draining"),
    "rss_producer_drain_mib": ("MiB", "producer VmRSS while draining"),
    "rss_consumer_drain_mib": ("MiB", "consumer VmRSS while draining (median)"),
    "rss_forker_drain_mib": ("MiB", "fork helper VmRSS while draining (median)"),
    "rss_job_drain_mib": ("MiB", "job child VmRSS while draining (median)"),
    "rss_consumer_drain_multiprocess_mib": ("MiB", "consumer VmRSS, PROCESS_LIBRARY="
                                                   "multiprocess"),
    "rss_supervisor_idle_mib": ("MiB", "supervisor VmRSS, idle node"),
    "rss_producer_idle_mib": ("MiB", "producer VmRSS, idle node"),
    "rss_consumer_idle_mib": ("MiB", "consumer VmRSS, idle node (median)"),
    "rss_forker_idle_mib": ("MiB", "fork helper VmRSS, idle node (median)"),
    "rss_job_idle_mib": ("MiB", "pre-forked job child VmRSS, idle (median)"),
    "pickle_send_us_multiprocess": ("us/msg", "Connection.send/recv pickled, multiprocess"),
    "pickle_send_us_multiprocessing": ("us/msg", "Connection.send/recv pickled, multiprocessing"),
    "bytes_send_us_multiprocess": ("us/msg", "send_bytes(encode)/decode, multiprocess"),
    "bytes_send_us_multiprocessing": ("us/msg", "send_bytes(encode)/decode, multiprocessing"),
    "spawn_idle_rss_mib_multiprocess": ("MiB", "freshly spawned idle process, multiprocess"),
    "spawn_idle_rss_mib_multiprocessing": ("MiB", "freshly spawned idle process, multiprocessing"),
    "idle_cpu_percent": ("% core", "idle node tree CPU"),
    "idle_db_cpu_percent": ("% core", "its PostgreSQL backends' CPU while idle"),
    **CLUSTER_METRICS,
}


def parse_only(text: str | None) -> tuple[str, ...]:
    """``--only a,b`` -> the selected measurements in canonical order (all when empty)."""
    if not text:
        return MEASUREMENTS
    wanted = [w.strip() for w in text.split(",") if w.strip()]
    unknown = [w for w in wanted if w not in MEASUREMENTS]
    if unknown:
        raise ValueError(f"unknown measurement(s) {', '.join(unknown)}; "
                         f"choose from {', '.join(MEASUREMENTS)}")
    return tuple(m for m in MEASUREMENTS if m in wanted)


# Spawned helpers -----------------------------------------------------------------------
#
# A spawned process imports the module of its target. Were the targets functions of this
# module, every prober would carry this whole module (~1.2 MiB more than a consumer, and
# a fork here gets ~5 % slower per extra MiB of RSS). So the target is the builtin
# ``exec`` running the source below: the prober imports what a consumer imports (the
# process library's bootstrap, stagerunner.consumer, the task module) and nothing else.

PROBE_SOURCE = """
import json, os, time
import stagerunner.consumer
from stagerunner import registry

def probe(conn, seconds, cap, modules):
    registry.load(modules)
    conn.send_bytes(b"ready")
    if not conn.poll(60):
        os._exit(2)
    conn.recv_bytes()
    count = 0
    start = time.monotonic()
    end = start + seconds
    while count < cap and time.monotonic() < end:
        pid = os.fork()
        if pid == 0:
            os._exit(0)
        os.waitpid(pid, 0)
        count += 1
    elapsed = time.monotonic() - start
    with open("/proc/self/status") as f:
        rss = [int(line.split()[1]) for line in f if line.startswith("VmRSS:")]
    conn.send_bytes(json.dumps([count, elapsed, rss[0] if rss else None]).encode())
    conn.poll(10)

probe(conn, seconds, cap, modules)
"""

# A freshly spawned process that only says it is up and waits (imports nothing more).
IDLE_SOURCE = """
conn.send_bytes(b"ready")
conn.poll(60)
"""


def _wait_message(conn: Any, timeout: float, what: str) -> bytes:
    if not conn.poll(timeout):
        raise BenchError(f"no {what} within {timeout:g} s")
    data: bytes = conn.recv_bytes()
    return data


def _end_process(process: Any) -> None:
    process.join(5)
    if process.is_alive():
        process.kill()
        process.join(5)


@dataclass
class Options:
    runs: int
    tasks: int
    drain_tasks: int
    single_tasks: int
    consumers: int
    only: tuple[str, ...]
    fork_seconds: float
    latency_rate: float
    latency_seconds: float
    idle_seconds: float
    deadline_tasks: int
    pickle_messages: int
    quick: bool
    scale_rows: int = 1_000_000
    status_rows: int = 2_000_000
    scale_tasks: int = 15_000


class Bench:
    def __init__(self, options: Options, db: BenchDB, workdir: Path) -> None:
        self.o = options
        self.db = db
        self.workdir = workdir
        self.notes: list[str] = []
        self.details: list[dict[str, Any]] = []  # per run: extra context

    def note(self, text: str) -> None:
        if text not in self.notes:
            self.notes.append(text)

    # 1, 2
    def enqueue_bulk(self, out: dict[str, float]) -> None:
        import stagerunner

        self.db.reset()
        items = [(NOOP, [])] * self.o.tasks
        started = time.perf_counter()
        ids = stagerunner.enqueue_many(items, conn=self.db.conn)
        elapsed = time.perf_counter() - started
        if len(ids) != self.o.tasks:
            raise BenchError(f"enqueue_many returned {len(ids)} ids for {self.o.tasks} tasks")
        out["enqueue_bulk_rate"] = rate(self.o.tasks, elapsed)
        self.db.reset()

    def enqueue_single(self, out: dict[str, float]) -> None:
        import stagerunner

        self.db.reset()
        n = self.o.single_tasks
        started = time.perf_counter()
        for _ in range(n):
            stagerunner.enqueue(NOOP, [], conn=self.db.conn)
        elapsed = time.perf_counter() - started
        out["enqueue_single_rate"] = rate(n, elapsed)
        self.db.reset()

    def enqueue_async(self, out: dict[str, float]) -> None:
        import asyncio

        import psycopg

        import stagerunner

        self.db.reset()

        async def run() -> None:
            async with await psycopg.AsyncConnection.connect(self.db.dsn, autocommit=True) as aconn:
                started = time.perf_counter()
                ids = await stagerunner.aenqueue_many([(NOOP, [])] * self.o.tasks, conn=aconn)
                out["enqueue_async_bulk_rate"] = rate(len(ids), time.perf_counter() - started)
                n = self.o.single_tasks
                started = time.perf_counter()
                for _ in range(n):
                    await stagerunner.aenqueue(NOOP, [], conn=aconn)
                out["enqueue_async_single_rate"] = rate(n, time.perf_counter() - started)

        asyncio.run(run())
        self.db.reset()

    # 3, 7 (while draining)
    def drain(self, out: dict[str, float], run: int) -> None:
        import stagerunner

        modes = list(DRAIN_MODES)
        # interleave: rotate the mode order from run to run so no mode always goes first
        shift = run % len(modes)
        modes = modes[shift:] + modes[:shift]
        rss_samples: list[dict[str, float]] = []
        for label, env in modes:
            self.db.reset()
            stagerunner.enqueue_many([(NOOP, [])] * self.o.drain_tasks, conn=self.db.conn)
            self.db.analyze()
            node = Node(self.db, self.o.consumers, env, self.workdir, f"drain-{label}")
            watch = DrainWatch(self.db, node, self.o.drain_tasks,
                               rss=label.startswith("default") and "rss" in self.o.only,
                               cpu=label in CPU_MODES)
            with node:
                limit = 60 + self.o.drain_tasks / 20  # far above any plausible rate
                if not self.db.wait_finished(limit, node, during=watch.step):
                    raise BenchError(f"drain ({label}) did not finish within {limit:g} s")
                cpu = watch.cpu_per_task()  # before the stop: the same processes, still alive
            if label == "default":
                rss_samples += watch.rss_samples
            elif watch.rss_samples:  # the library's share of a consumer's RSS
                values = [x["consumer"] for x in watch.rss_samples if "consumer" in x]
                if values:
                    out["rss_consumer_drain_multiprocess_mib"] = median(values)
            counts = self.db.status_counts()
            first, last, ok = self.db.rows(
                "SELECT extract(epoch FROM min(claimed_at)), extract(epoch FROM max(finished_at)), "
                "count(*) FILTER (WHERE status = 'success') FROM stagerunner.tasks")[0]
            if ok != self.o.drain_tasks:
                self.note(f"drain {label}: only {ok} of {self.o.drain_tasks} succeeded: {counts}")
            out[f"drain_{label}"] = rate(int(ok), float(last) - float(first))
            if label == "default":
                out["drain_startup_s"] = float(first) - node.started_wall
            short = CPU_MODES.get(label)
            for role, ms in cpu.items():
                out[f"cpu_ms_per_task_{short}_{role}"] = ms
            for line in node.log_problems()[:3]:
                self.note(f"node log (drain {label}): {line[:300]}")
        if rss_samples:
            for role in ("supervisor", "producer", "consumer", "forker", "job"):
                values = [s[role] for s in rss_samples if role in s]
                if values:
                    out[f"rss_{role}_drain_mib"] = median(values)

    # 4
    def scale(self, out: dict[str, float], run: int) -> None:
        """Drain rate over the first K tasks with a 20,000-row backlog and with a large one,
        in child-reuse mode (where the claim, not the fork, is the per-task cost), plus the
        claim's plan on the large table and the producer's RSS across that drain."""
        backlogs = [("small", 20_000), ("large", self.o.scale_rows)]
        if run % 2:
            backlogs.reverse()  # interleave
        for label, rows in backlogs:
            self.db.reset()
            with self.db.connect() as conn:
                conn.execute("INSERT INTO stagerunner.tasks (name, args) "
                             "SELECT %s, '[]' FROM generate_series(1, %s)", (NOOP, rows))
            self.db.analyze()
            if label == "large" and run == 0:
                self._claim_plan()
            node = Node(self.db, self.o.consumers, {"STAGERUNNER_CHILD_REUSE": "100"},
                        self.workdir, f"scale-{label}")
            rss: list[float] = []
            with node:
                deadline = time.monotonic() + 60 + self.o.scale_tasks / 100
                done = 0
                while time.monotonic() < deadline:
                    done = int(self.db.scalar("SELECT count(*) FROM stagerunner.tasks "
                                              "WHERE finished_at IS NOT NULL"))
                    producer = node.producer_pid()
                    kib = procfs.rss_kib(producer) if producer else None
                    if kib:
                        rss.append(kib_to_mib(kib))
                    if done >= self.o.scale_tasks:
                        break
                    time.sleep(0.25)
                if done < self.o.scale_tasks:
                    raise BenchError(f"scale ({label}): only {done} tasks finished in time")
                first, last, n = self.db.rows(
                    "SELECT extract(epoch FROM min(claimed_at)), extract(epoch FROM max(finished_at)),"
                    " count(*) FROM stagerunner.tasks WHERE finished_at IS NOT NULL")[0]
            out[f"scale_drain_{label}"] = rate(int(n), float(last) - float(first))
            if label == "large" and rss:
                out["scale_producer_rss_growth_mib"] = max(rss) - min(rss)
        if "scale_drain_small" in out and "scale_drain_large" in out:
            out["scale_large_over_small"] = ratio(out["scale_drain_large"], out["scale_drain_small"])

    def _claim_plan(self) -> None:
        from importlib import resources

        sql = resources.files("stagerunner.sql").joinpath("claim_tasks.sql").read_text()
        with self.db.connect() as conn:
            conn.autocommit = False
            plan = conn.execute("EXPLAIN (ANALYZE, COSTS OFF, TIMING OFF, SUMMARY ON) " + sql,
                                {"owner": "bench/plan", "queue": "default", "limit": 64}).fetchall()
            conn.rollback()  # the plan's claim is not kept
        text = "\n".join(r[0] for r in plan)
        self.details.append({"claim_plan": text})
        used = "tasks_claim_idx" in text
        self.note(f"scale: the claim on {self.o.scale_rows:,} waiting rows "
                  f"{'uses' if used else 'does NOT use'} tasks_claim_idx; plan:\n" + text)

    def fork(self, out: dict[str, float]) -> None:
        from stagerunner import procs

        ctx = procs.context()  # the shipped default, like the consumers it stands for
        probers = []
        try:
            for _ in range(self.o.consumers):
                ours, theirs = ctx.Pipe(duplex=True)
                scope = {"conn": theirs, "seconds": self.o.fork_seconds, "cap": FORK_CAP,
                         "modules": [TASK_MODULE]}
                process = ctx.Process(target=exec, args=(PROBE_SOURCE, scope),
                                      name="stagerunner-bench-fork-probe", daemon=True)
                process.start()
                theirs.close()
                probers.append((process, ours))
            for _, conn in probers:
                _wait_message(conn, 60, "ready from a fork prober")
            for _, conn in probers:
                conn.send_bytes(b"go")
            results = [json.loads(_wait_message(conn, self.o.fork_seconds + 30, "fork count"))
                       for _, conn in probers]
            for _, conn in probers:
                conn.send_bytes(b"bye")
        finally:
            for process, conn in probers:
                _end_process(process)
                conn.close()
        out["fork_ceiling"] = sum(rate(count, elapsed) for count, elapsed, _ in results)
        rss = [kib for _, _, kib in results if kib]
        if rss:
            out["fork_probe_rss_mib"] = kib_to_mib(median(rss))

    # 5, 7 (idle), 9
    def idle_node(self, out: dict[str, float]) -> None:
        import stagerunner

        self.db.reset()
        node = Node(self.db, self.o.consumers, {}, self.workdir, "idle")
        with node:
            roles = node.wait_ready()
            time.sleep(1.0)  # let start-up work (first claims, beats) settle
            if "idle" in self.o.only:
                pids = node.tree()
                backends = self.db.backends()
                before, db_before = procfs.cpu_ns(pids), procfs.cpu_ns(backends)
                started = time.monotonic()
                time.sleep(self.o.idle_seconds)
                wall = time.monotonic() - started
                after_pids = node.tree()
                after, db_after = procfs.cpu_ns(after_pids), procfs.cpu_ns(backends)
                ns = sum(after[p] - before.get(p, 0) for p in after)
                db_ns = sum(db_after[p] - db_before.get(p, 0) for p in db_after)
                out["idle_cpu_percent"] = cpu_percent(ns / 1e9, wall)
                out["idle_db_cpu_percent"] = cpu_percent(db_ns / 1e9, wall)
                gone = set(before) - set(after)
                if gone:
                    self.note(f"idle: {len(gone)} process(es) of the node exited during the "
                              "idle window; their CPU in it is not counted")
            if "rss" in self.o.only:
                rss = role_rss_mib(node.roles(roles.producer))
                for role, mib in rss.items():
                    out[f"rss_{role}_idle_mib"] = mib
            if "latency" in self.o.only:
                self._trickle(out, node, stagerunner)
            for line in node.log_problems()[:3]:
                self.note(f"node log (idle/latency): {line[:300]}")

    def _trickle(self, out: dict[str, float], node: Node, stagerunner: Any) -> None:
        n = max(1, int(self.o.latency_rate * self.o.latency_seconds))
        interval = 1.0 / self.o.latency_rate
        started = time.monotonic()
        for i in range(n):
            delay = started + i * interval - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            stagerunner.enqueue(STARTED_AT, [], conn=self.db.conn)
        out["latency_enqueue_rate"] = rate(n, time.monotonic() - started)
        if not self.db.wait_finished(30 + n / 50, node, interval=0.1):
            self.note("latency: some trickled tasks did not finish in time; measured the rest")
        latencies = [1000 * float(v) for (v,) in self.db.rows(
            "SELECT (result #>> '{}')::float8 - extract(epoch FROM created_at)::float8 "
            "FROM stagerunner.tasks WHERE name = %s AND status = 'success'", (STARTED_AT,))]
        if len(latencies) < n:
            self.note(f"latency: {len(latencies)} of {n} trickled tasks succeeded")
        if latencies:
            out["latency_p50_ms"] = percentile(latencies, 50)
            out["latency_p99_ms"] = percentile(latencies, 99)

    # 6
    def deadline(self, out: dict[str, float]) -> None:
        import stagerunner

        self.db.reset()
        env = {"STAGERUNNER_JOB_TIMEOUT": str(DEADLINE_S)}
        node = Node(self.db, self.o.consumers, env, self.workdir, "deadline")
        k = self.o.deadline_tasks
        with node:
            node.wait_ready()
            stagerunner.enqueue_many([(SLEEP_FOREVER, [])] * k, conn=self.db.conn, max_attempts=1)
            limit = 30 + k * DEADLINE_S * 5
            if not self.db.wait_finished(limit, node, interval=0.1):
                raise BenchError(f"deadline tasks did not all end within {limit:g} s")
        rows = self.db.rows(
            "SELECT (e->>'runtime_ms')::float8, e->>'status' FROM stagerunner.tasks t, "
            "jsonb_array_elements(t.errors) e WHERE t.name = %s", (SLEEP_FOREVER,))
        runtimes = [float(ms) for ms, status in rows if status == "timeout" and ms is not None]
        others = [status for _, status in rows if status != "timeout"]
        if others:
            self.note(f"deadline: {len(others)} attempt(s) ended otherwise: {sorted(set(others))}")
        if not runtimes:
            raise BenchError("deadline: no attempt recorded a runtime_ms")
        overshoot = [ms - DEADLINE_S * 1000 for ms in runtimes]
        out["deadline_overshoot_p50_ms"] = percentile(overshoot, 50)
        out["deadline_overshoot_p99_ms"] = percentile(overshoot, 99)

    # 11
    def status(self, out: dict[str, float]) -> None:
        """`status` and a metrics scrape's queries on a table that keeps a week of finished
        tasks (--status-rows of them) beside 20,000 waiting ones: p50 of 9 runs each."""
        from stagerunner import admin, opstore

        self.db.reset()
        with self.db.connect() as conn:
            conn.execute(
                "INSERT INTO stagerunner.tasks (name, args, status, attempts, claimed_by, "
                "finished_at) SELECT %s, '[]', (ARRAY['success', 'success', 'success', 'error', "
                "'timeout'])[1 + g %% 5]::stagerunner.task_status, 1, 'bench/x', "
                "now() - make_interval(secs => g %% 604800) FROM generate_series(1, %s) g",
                (NOOP, self.o.status_rows))
            conn.execute("INSERT INTO stagerunner.tasks (name, args) "
                         "SELECT %s, '[]' FROM generate_series(1, 20000)", (NOOP,))
        self.db.analyze()
        with self.db.connect() as conn:
            out["status_p50_ms"] = _p50_ms(lambda: admin.status_report(conn))
            out["scrape_p50_ms"] = _p50_ms(lambda: (opstore.count_live_tasks(conn),
                                                    opstore.count_finished_tasks(conn)))
        self.db.reset()

    # 12
    def prune(self, out: dict[str, float]) -> None:
        """How fast retention deletes: 200,000 finished rows past it, one pruner's batches
        back to back (compare with the drain rates: it must keep up with them)."""
        from stagerunner.pruner import BATCH, Pruner

        self.db.reset()
        rows = 200_000
        with self.db.connect() as conn:
            conn.execute(
                "INSERT INTO stagerunner.tasks (name, args, status, attempts, claimed_by, "
                "finished_at) SELECT %s, '[]', 'success', 1, 'bench/x', now() - interval '2 days' "
                "FROM generate_series(1, %s)", (NOOP, rows))
        self.db.analyze()
        pruner = Pruner(self.db.dsn, retention_s=86400)
        started, deleted = time.perf_counter(), 0
        while (n := pruner.step()) == BATCH or (n and deleted + n < rows):
            deleted += n
        deleted += n
        out["prune_rate"] = rate(deleted, time.perf_counter() - started)
        pruner.stop.set()
        self.db.reset()

    # 8
    def pickle(self, out: dict[str, float]) -> None:
        from stagerunner import procs
        from stagerunner.protocol import Outcome, Status, decode, encode

        outcome = Outcome(123456, 1, Status.SUCCESS, 1.234, result="null", demand=1)
        for library in LIBRARIES:
            ctx = procs.context(library)
            a, b = ctx.Pipe(duplex=True)
            try:
                n = self.o.pickle_messages
                out[f"pickle_send_us_{library}"] = _pipe_cost(
                    n, lambda: a.send(outcome), lambda: b.recv())
                out[f"bytes_send_us_{library}"] = _pipe_cost(
                    n, lambda: a.send_bytes(encode(outcome)), lambda: decode(b.recv_bytes()))
                if b.poll(0):
                    raise BenchError("pipe not drained")
            finally:
                a.close()
                b.close()
            out[f"spawn_idle_rss_mib_{library}"] = _spawned_idle_rss_mib(ctx)
        import pickle as std_pickle

        import multiprocess.reduction as mp_reduction

        sizes = {"stdlib pickle": len(std_pickle.dumps(outcome, std_pickle.HIGHEST_PROTOCOL)),
                 "multiprocess (dill)": len(bytes(mp_reduction.ForkingPickler.dumps(outcome))),
                 "protocol.encode": len(encode(outcome))}
        self.note("pickle: message sizes in bytes: "
                  + ", ".join(f"{k} {v}" for k, v in sizes.items()))


def _p50_ms(call: Callable[[], Any], runs: int = 9) -> float:
    times = []
    for _ in range(runs):
        started = time.perf_counter()
        call()
        times.append((time.perf_counter() - started) * 1000)
    return median(times)


def _pipe_cost(n: int, send: Callable[[], Any], recv: Callable[[], Any], batch: int = 64) -> float:
    """µs per message for n messages sent then received in batches (one thread)."""
    for _ in range(min(n, batch)):  # warm-up
        send()
    for _ in range(min(n, batch)):
        recv()
    done = 0
    started = time.perf_counter()
    while done < n:
        k = min(batch, n - done)
        for _ in range(k):
            send()
        for _ in range(k):
            recv()
        done += k
    return 1e6 * (time.perf_counter() - started) / n


def _spawned_idle_rss_mib(ctx: Any) -> float:
    ours, theirs = ctx.Pipe(duplex=True)
    process = ctx.Process(target=exec, args=(IDLE_SOURCE, {"conn": theirs}),
                          name="stagerunner-bench-idle",
                          daemon=True)
    process.start()
    theirs.close()
    try:
        _wait_message(ours, 60, "ready from an idle spawned process")
        time.sleep(0.2)
        kib = procfs.rss_kib(process.pid)
        if kib is None:
            raise BenchError("could not read the idle process's RSS")
        ours.send_bytes(b"bye")
        return kib_to_mib(kib)
    finally:
        _end_process(process)
        ours.close()


# Driving -----------------------------------------------------------------------------

def run_bench(options: Options, db: BenchDB, workdir: Path, log: Callable[[str], None]
              ) -> tuple[list[dict[str, float]], Bench]:
    bench = Bench(options, db, workdir)
    runs: list[dict[str, float]] = []
    only = options.only
    table: list[tuple[str, bool, Callable[[dict[str, float], int], None]]] = [
        ("enqueue_bulk", "enqueue_bulk" in only, lambda out, r: bench.enqueue_bulk(out)),
        ("enqueue_single", "enqueue_single" in only, lambda out, r: bench.enqueue_single(out)),
        ("enqueue_async", "enqueue_async" in only, lambda out, r: bench.enqueue_async(out)),
        ("fork", "fork" in only, lambda out, r: bench.fork(out)),
        ("drain", "drain" in only, bench.drain),
        ("idle node", bool({"latency", "idle", "rss"} & set(only)),
         lambda out, r: bench.idle_node(out)),
        ("deadline", "deadline" in only, lambda out, r: bench.deadline(out)),
        ("pickle", "pickle" in only, lambda out, r: bench.pickle(out)),
        ("scale", "scale" in only, bench.scale),
        ("status", "status" in only, lambda out, r: bench.status(out)),
        ("prune", "prune" in only, lambda out, r: bench.prune(out)),
        ("cluster", "cluster" in only, lambda out, r: cluster(
            db, options.consumers, options.drain_tasks, workdir, r, out, bench.note)),
    ]
    steps = [(name, step) for name, wanted, step in table if wanted]
    for run in range(options.runs):
        out: dict[str, float] = {}
        for name, step in steps:
            started = time.monotonic()
            try:
                step(out, run)
            except BenchError as exc:  # its node is already killed; the other steps go on
                bench.note(f"run {run + 1} {name} FAILED: {exc}")
                log(f"run {run + 1}/{options.runs}: {name} FAILED: {exc}")
                continue
            log(f"run {run + 1}/{options.runs}: {name} done in {time.monotonic() - started:.1f} s")
        if "drain_default" in out and "fork_ceiling" in out:
            out["drain_over_fork"] = ratio(out["drain_default"], out["fork_ceiling"])
        if "drain_reuse100" in out and "fork_ceiling" in out:
            out["drain_reuse_over_fork"] = ratio(out["drain_reuse100"],
                                                 out["fork_ceiling"])
        runs.append(out)
    return runs, bench


def summarize_runs(runs: Sequence[dict[str, float]]) -> dict[str, dict[str, Any]]:
    """metric -> unit, description, min/median/max/n and the raw values, in METRICS order."""
    summary: dict[str, dict[str, Any]] = {}
    names = [m for m in METRICS if any(m in r for r in runs)]
    names += sorted({k for r in runs for k in r} - set(names))
    for name in names:
        values = [r[name] for r in runs if name in r]
        unit, description = METRICS.get(name, ("", ""))
        summary[name] = {"unit": unit, "description": description, **summarize(values),
                         "values": values}
    return summary


def render_table(summary: dict[str, dict[str, Any]]) -> str:
    w = max([len("metric"), *map(len, summary)])
    header = f"{'metric':<{w}} {'unit':<11} {'min':>10} {'median':>10} {'max':>10} {'n':>3}  description"
    lines = [header, "-" * len(header)]
    for name, s in summary.items():
        lines.append(f"{name:<{w}} {s['unit']:<11} {format_value(s['min']):>10} "
                     f"{format_value(s['median']):>10} {format_value(s['max']):>10} "
                     f"{s['n']:>3}  {s['description']}")
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    from pathlib import Path

    p = argparse.ArgumentParser(
        prog="bench", description="stagerunner benchmark (see the module docstring of "
        "stagerunner_tools.bench for what each measurement does)")
    p.add_argument("--quick", action="store_true", help="small sizes, one run (smoke test)")
    p.add_argument("--runs", type=int, help="runs per measurement (default 3; 1 with --quick)")
    p.add_argument("--tasks", type=int, help="N for the bulk enqueue (default 20000)")
    p.add_argument("--drain-tasks", type=int, help="tasks per drain run (default 5000)")
    p.add_argument("--consumers", type=int, default=os.cpu_count() or 1,
                   help="STAGERUNNER_CONSUMERS and fork probers (default: cores)")
    p.add_argument("--scale-rows", type=int,
                   help="waiting rows of the large backlog in [scale] (default 1000000)")
    p.add_argument("--only", help="comma-separated subset of: " + ",".join(MEASUREMENTS))
    p.add_argument("--json", type=Path, help="write results here "
                   "(default bench-results/bench-<timestamp>.json)")
    p.add_argument("--dsn", default=DEFAULT_DSN, help="admin DSN (default %(default)s)")
    return p


def options_from(args: argparse.Namespace) -> Options:
    quick = args.quick
    runs = args.runs if args.runs is not None else (1 if quick else 3)
    if runs < 1 or args.consumers < 1:
        raise ValueError("--runs and --consumers must be at least 1")
    tasks = args.tasks if args.tasks is not None else (2000 if quick else 20000)
    drain = args.drain_tasks if args.drain_tasks is not None else (500 if quick else 5000)
    if tasks < 1 or drain < 1:
        raise ValueError("--tasks and --drain-tasks must be at least 1")
    return Options(
        runs=runs, tasks=tasks, drain_tasks=drain, single_tasks=200 if quick else 2000,
        consumers=args.consumers, only=parse_only(args.only),
        fork_seconds=0.5 if quick else 2.0, latency_rate=200.0,
        latency_seconds=1.0 if quick else 5.0, idle_seconds=1.0 if quick else 3.0,
        deadline_tasks=(3 if quick else 10) * args.consumers,
        pickle_messages=10_000 if quick else 100_000, quick=quick,
        scale_rows=args.scale_rows if args.scale_rows else (100_000 if quick else 1_000_000),
        scale_tasks=2_000 if quick else 15_000,
        status_rows=100_000 if quick else 2_000_000)


def main(argv: list[str] | None = None) -> int:
    import platform
    import tempfile
    from pathlib import Path

    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        options = options_from(args)
    except ValueError as exc:
        parser.error(str(exc))

    def log(text: str) -> None:
        print(f"[bench] {text}", file=sys.stderr, flush=True)

    def on_signal(signum: int, frame: Any) -> None:
        raise SystemExit(128 + signum)  # unwinds through the finally blocks below

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGHUP, on_signal)
    started = time.monotonic()
    load_start = os.getloadavg()
    db = BenchDB(args.dsn)
    workdir = Path(tempfile.mkdtemp(prefix="stagerunner-bench-"))
    runs: list[dict[str, float]] = []
    bench: Bench | None = None
    try:
        db.create()
        log(f"database {db.name}; runs={options.runs} consumers={options.consumers} "
            f"tasks={options.tasks} drain_tasks={options.drain_tasks} "
            f"only={','.join(options.only)}")
        runs, bench = run_bench(options, db, workdir, log)
    finally:
        for node in list(Node.live):
            node.kill()
        try:
            db.drop()
        except Exception as exc:  # report, but do not hide the original error
            log(f"could not drop {db.name}: {exc}")
    summary = summarize_runs(runs)
    notes = list(bench.notes if bench else [])
    if "drain_over_fork" in summary:
        value = summary["drain_over_fork"]["median"]
        verdict = "meets" if value >= RATIO_TARGET else "is below"
        notes.append(f"drain/fork ratio (default mode) median {value:.2f} {verdict} the "
                     f"target of {RATIO_TARGET}")
    meta = {
        "when": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "python": platform.python_version(),
        "platform": platform.platform(), "cpus": os.cpu_count(),
        "options": {k: v for k, v in vars(options).items()},
        "elapsed_s": round(time.monotonic() - started, 1), "node_logs": str(workdir),
        "loadavg_start": load_start, "loadavg_end": os.getloadavg(),
    }
    report = {"meta": meta, "summary": summary, "runs": runs, "notes": notes}
    path = args.json or Path("bench-results") / f"bench-{time.strftime('%Y%m%d-%H%M%S')}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=2, default=str) + "\n")
    print(f"stagerunner bench: runs={options.runs} consumers={options.consumers} "
          f"tasks={options.tasks} drain_tasks={options.drain_tasks} "
          f"python {platform.python_version()} cpus={os.cpu_count()} "
          f"elapsed {meta['elapsed_s']} s; load average (1/5/15 min) at start "
          f"{'/'.join(f'{x:.2f}' for x in load_start)}, at end "
          f"{'/'.join(f'{x:.2f}' for x in meta['loadavg_end'])}")
    print(render_table(summary))
    for text in notes:
        print(f"note: {text}")
    print(f"json: {path}")
    return 0


if __name__ == "__main__":
    # Hide this file from the spawn preparation (no spec, no file): otherwise every
    # spawned prober would run it again as its __mp_main__ (+1.2 MiB of RSS, and a fork
    # gets ~5 % slower per MiB here). A consumer's __main__ (stagerunner.__main__) is
    # skipped by the library the same way, by its name. Then run under the real name.
    globals()["__spec__"] = None
    globals().pop("__file__", None)
    from stagerunner_tools import bench as _bench

    sys.exit(_bench.main())
