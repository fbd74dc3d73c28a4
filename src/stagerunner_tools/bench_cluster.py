"""[cluster] in ``bin/bench``: the same backlog drained by 1, 2 and 3 nodes on one database.

Each node is a ``python -m stagerunner run`` with C consumers (``--consumers``) and its
own node name. The nodes are started and made ready first (every producer has beaten,
every fork helper holds its pre-forked child); then the CPU time of their PostgreSQL
backends (application_name 'stagerunner', from /proc) is read, N no-op tasks
(``--drain-tasks``) are enqueued in one statement on the bench's own connection (not
counted), and the drain runs to the end. Reported per node count:

- drain: successes / (max(finished_at) - min(claimed_at)), database timestamps;
- PostgreSQL CPU per task: the nodes' backends' CPU over the drain / tasks;
- claim conflicts, defined here as lock waits: every 20 ms, the nodes' backends waiting on
  a heavyweight lock (pg_stat_activity.wait_event_type = 'Lock') are counted; the metric
  is the percentage of samples in which at least one was waiting. A claim never waits
  (``FOR UPDATE SKIP LOCKED`` skips a row another claim holds), so what this catches is
  the rest: outcomes, releases, heartbeats, rescues, retention meeting a claim. Rows a
  claim skipped are not counted by it; the CPU per task is where scanning past them
  would show. ``pg_stat_database.deadlocks`` over the drain is noted when not 0.

On the 2-core development machine the nodes share the same two cores, so more nodes
cannot drain faster: this measures what a node costs the database and whether nodes get
in each other's way, not the scaling of separate machines.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from stagerunner_tools import procfs
from stagerunner_tools.bench_nodes import BenchDB, BenchError, Node
from stagerunner_tools.stats import rate

NODE_COUNTS = (1, 2, 3)
SAMPLE_S = 0.02

METRICS: dict[str, tuple[str, str]] = {}
for _n in NODE_COUNTS:
    METRICS[f"cluster_drain_{_n}n"] = ("tasks/s", f"drain with {_n} node(s), C consumers each")
    METRICS[f"cluster_pg_cpu_ms_per_task_{_n}n"] = ("CPU ms/task",
                                                     f"{_n} node(s): their PG backends' CPU")
    METRICS[f"cluster_lock_wait_pct_{_n}n"] = ("% samples",
                                                f"{_n} node(s): a backend waiting on a lock")


def cluster(db: BenchDB, consumers: int, tasks: int, workdir: Path, run: int,
            out: dict[str, float], note: Any) -> None:
    """Drain `tasks` no-op tasks with 1, 2 and 3 nodes (order rotated per run)."""
    counts = list(NODE_COUNTS)
    shift = run % len(counts)
    for n in counts[shift:] + counts[:shift]:
        _drain_with(db, n, consumers, tasks, workdir, out, note)


def _drain_with(db: BenchDB, n: int, consumers: int, tasks: int, workdir: Path,
                out: dict[str, float], note: Any) -> None:
    import stagerunner
    from stagerunner_tools.bench import NOOP

    db.reset()
    nodes = []
    try:
        for i in range(n):
            node = Node(db, consumers, {"STAGERUNNER_NODE_NAME": f"{db.name}-n{i}"}, workdir,
                        f"cluster{n}-{i}")
            node.name = f"{db.name}-n{i}"
            nodes.append(node)
        for node in nodes:
            node.wait_ready()
        backends = db.backends()
        if len(backends) < 2 * n:
            raise BenchError(f"cluster: {len(backends)} backends for {n} node(s)")
        deadlocks = _deadlocks(db)
        before = procfs.cpu_ns(backends)
        stagerunner.enqueue_many([(NOOP, [])] * tasks, conn=db.conn)
        samples = waiting = 0
        deadline = time.monotonic() + 60 + tasks / 20
        while db.unfinished():
            if time.monotonic() > deadline:
                raise BenchError(f"cluster: {n} node(s) did not drain in time")
            for node in nodes:
                if node.proc.poll() is not None:
                    raise BenchError(f"cluster: a node exited: {node.log_tail()}")
            samples += 1
            waiting += int(db.scalar(
                "SELECT count(*) > 0 FROM pg_stat_activity WHERE datname = %s AND "
                "application_name = 'stagerunner' AND wait_event_type = 'Lock'", (db.name,)))
            time.sleep(SAMPLE_S)
        after = procfs.cpu_ns(backends)
        for node in nodes:
            for line in node.log_problems()[:2]:
                note(f"node log (cluster {n}): {line[:300]}")
    finally:
        for node in nodes:
            node.finish()
    first, last, ok = db.rows(
        "SELECT extract(epoch FROM min(claimed_at)), extract(epoch FROM max(finished_at)), "
        "count(*) FILTER (WHERE status = 'success') FROM stagerunner.tasks")[0]
    if ok != tasks:
        note(f"cluster {n}: only {ok} of {tasks} succeeded")
    out[f"cluster_drain_{n}n"] = rate(int(ok), float(last) - float(first))
    ns = sum(after.get(p, 0) - before.get(p, 0) for p in after)
    out[f"cluster_pg_cpu_ms_per_task_{n}n"] = ns / 1e6 / max(1, int(ok))
    out[f"cluster_lock_wait_pct_{n}n"] = 100.0 * waiting / max(1, samples)
    more = _deadlocks(db) - deadlocks
    if more:
        note(f"cluster {n}: {more} deadlock(s) during the drain")


def _deadlocks(db: BenchDB) -> int:
    return int(db.scalar("SELECT deadlocks FROM pg_stat_database WHERE datname = %s",
                         (db.name,)) or 0)
