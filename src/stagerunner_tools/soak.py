"""Sustained load: ``bin/soak --minutes N`` (``python -m stagerunner_tools.soak``).

A private PostgreSQL server with production settings (``pgserver.PrivatePG``: autovacuum
on, fsync on, the autovacuum log on) holds a fresh database with the schema. One node
(``--consumers`` C, retention ``--retention`` seconds, no-op tasks of the bench's task
module, ``--child-reuse`` 100 by default: the soak is about the table and the stages'
memory, and on a shared 2-core machine a fresh child per job at 150 tasks/s leaves too
little CPU to keep up when other work runs; ``--child-reuse 1`` soaks the default mode)
runs while this process enqueues one task at a time at ``--rate`` tasks/s, each
its own statement and commit, paced on the monotonic clock. Every ``--sample`` seconds it
records (``soak_sample``): the table's heap, index and TOAST size and each index's size,
live and dead tuples, the updates of the window and how many were HOT, autovacuum runs,
claim latency (``claimed_at`` - ``greatest(run_at, created_at)`` of the tasks claimed in
the window, from the database clock: how long a due task waited to be claimed), enqueue
latency (the client's wall time of each enqueue call in the window), and the resident
memory (VmRSS) of every stage: supervisor, producer, each consumer and fork helper.

The report prints every sample, then start (the first sample after one retention period
and two autovacuum naptimes, when pruning and vacuum are both in their stride), end, and
end / start for each figure; the JSON goes to ``bench-results/soak-<time>.json``.

``--vacuum`` picks how vacuum behaves: ``on`` (autovacuum as configured), ``held`` (a
session keeps one snapshot open for the whole run, as a forgotten transaction or a long
report would: autovacuum runs but may not remove anything newer than it, so vacuum lags
behind), or ``off`` (autovacuum disabled: what this machine's shared server does).
``--table-settings reset`` drops the storage parameters ``schema.sql`` gives the tables
(PostgreSQL's defaults instead), to show what they change. ``--seed N`` first fills the
table with N finished tasks of the last half hour (then VACUUM ANALYZE), standing for the
rows a long retention keeps: with a small table any vacuum threshold is reached within a
naptime, with a large one the default (20 % of the table dead) is not.
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import time
from pathlib import Path
from typing import Any

from stagerunner_tools import dbs, procfs
from stagerunner_tools.nodes import NodeProcess, node_env
from stagerunner_tools.pgserver import PrivatePG
from stagerunner_tools.stats import kib_to_mib, median, percentile

NOOP = "stagerunner_tools.bench_tasks:noop"
NAPTIME_S = 60  # autovacuum_naptime: PostgreSQL's default, kept
PRODUCTION = f"""
autovacuum = on
fsync = on
synchronous_commit = on
autovacuum_naptime = {NAPTIME_S}s
log_autovacuum_min_duration = 0
shared_buffers = 128MB
"""
TABLE_SQL = """
SELECT pg_relation_size(c.oid) AS heap, pg_indexes_size(c.oid) AS indexes,
       pg_total_relation_size(c.oid) AS total, s.n_live_tup AS live, s.n_dead_tup AS dead,
       s.n_tup_upd AS upd, s.n_tup_hot_upd AS hot, s.autovacuum_count AS autovacuums
FROM pg_class c JOIN pg_stat_user_tables s ON s.relid = c.oid
WHERE c.oid = 'stagerunner.tasks'::regclass
"""
INDEX_SQL = """
SELECT indexrelid::regclass::text, pg_relation_size(indexrelid)
FROM pg_index WHERE indrelid = 'stagerunner.tasks'::regclass ORDER BY 1
"""
RESET_SQL = (
    "ALTER TABLE stagerunner.tasks RESET (autovacuum_vacuum_scale_factor, "
    "autovacuum_vacuum_threshold, autovacuum_vacuum_insert_scale_factor, "
    "autovacuum_vacuum_insert_threshold, autovacuum_analyze_scale_factor, "
    "autovacuum_analyze_threshold)",
    "ALTER TABLE stagerunner.nodes RESET (fillfactor)")
SEED_SQL = """
INSERT INTO stagerunner.tasks (name, args, status, attempts, claimed_by, claimed_at,
                               finished_at, result)
SELECT %s, '[]', 'success', 1, 'seed/0', t, t, 'null'
FROM (SELECT now() - random() * interval '30 minutes' AS t FROM generate_series(1, %s)) AS s
"""
CLAIM_SQL = """
SELECT 1000 * extract(epoch FROM claimed_at - greatest(run_at, created_at))
FROM stagerunner.tasks WHERE claimed_at > %s AND claimed_at <= %s
"""


def soak_sample(conn: Any, node: NodeProcess, since: Any, enqueue_ms: list[float],
                before: dict[str, float] | None) -> tuple[dict[str, float], Any]:
    """One sample; returns it and the database time it covers up to."""
    now = conn.execute("SELECT clock_timestamp()").fetchone()[0]
    t = dict(zip(("heap", "indexes", "total", "live", "dead", "upd", "hot", "autovacuums"),
                 conn.execute(TABLE_SQL).fetchone()))
    out = {"heap_mib": t["heap"] / 2**20, "index_mib": t["indexes"] / 2**20,
           "total_mib": t["total"] / 2**20, "live": float(t["live"]), "dead": float(t["dead"]),
           "upd_total": float(t["upd"]), "hot_total": float(t["hot"]),
           "autovacuums": float(t["autovacuums"])}
    for name, size in conn.execute(INDEX_SQL).fetchall():
        out[f"idx_{name.split('.')[-1]}_mib"] = size / 2**20
    if before is not None:
        upd = out["upd_total"] - before["upd_total"]
        out["hot_pct"] = 100.0 * (out["hot_total"] - before["hot_total"]) / upd if upd else 0.0
    claims = [float(v) for (v,) in conn.execute(CLAIM_SQL, (since, now)).fetchall()]
    if claims:
        out["claim_p50_ms"], out["claim_p99_ms"] = percentile(claims, 50), percentile(claims, 99)
    if enqueue_ms:
        out["enqueue_p50_ms"] = percentile(enqueue_ms, 50)
        out["enqueue_p99_ms"] = percentile(enqueue_ms, 99)
    out.update(stage_rss(node))
    return out, now


def stage_rss(node: NodeProcess) -> dict[str, float]:
    """VmRSS (MiB) of the supervisor, the producer, and the largest consumer and fork
    helper (each one's own figure is in the JSON's `rss_each`)."""
    producer, consumers = node.stages()
    found = {"rss_supervisor_mib": procfs.rss_kib(node.pid), "rss_producer_mib":
             procfs.rss_kib(producer) if producer else None}
    forkers = [f for c in consumers for f in procfs.children(c)]
    for role, pids in (("consumer", consumers), ("forker", forkers)):
        values = [v for v in map(procfs.rss_kib, pids) if v]
        found[f"rss_{role}_max_mib"] = max(values) if values else None
    return {k: kib_to_mib(v) for k, v in found.items() if v}


def steady_index(samples: list[dict[str, float]], retention_s: float) -> int:
    """The first sample taken once pruning and vacuum are both in their stride."""
    settle = retention_s + 2 * NAPTIME_S
    for i, s in enumerate(samples):
        if s["t_s"] >= settle:
            return i
    return 0


def render(samples: list[dict[str, float]], start: int) -> str:
    keys = ["t_s", "total_mib", "heap_mib", "index_mib", "live", "dead", "hot_pct",
            "autovacuums", "claim_p50_ms", "claim_p99_ms", "enqueue_p50_ms", "enqueue_p99_ms",
            "rss_supervisor_mib", "rss_producer_mib", "rss_consumer_max_mib", "rss_forker_max_mib"]
    lines = [" ".join(f"{k[:-4] if k.endswith('_mib') else k:>14}" for k in keys)]
    for s in samples:
        lines.append(" ".join(f"{s.get(k, float('nan')):>14.2f}" for k in keys))
    first, last = samples[start], samples[-1]
    lines.append("")
    lines.append(f"{'figure':<24} {'start':>12} {'end':>12} {'end/start':>10}")
    for k in keys[1:] + sorted(k for k in last if k.startswith("idx_")):
        a, b = first.get(k), last.get(k)
        if a is None or b is None:
            continue
        lines.append(f"{k:<24} {a:>12.2f} {b:>12.2f} {(b / a if a else float('nan')):>10.2f}")
    return "\n".join(lines)


def run(args: argparse.Namespace, log: Any) -> dict[str, Any]:
    import stagerunner

    server = PrivatePG.create(settings=PRODUCTION + ("autovacuum = off\n" if args.vacuum == "off"
                                                     else ""))
    node = holder = None
    workdir = Path(server.data.parent)
    try:
        server.start()
        dsn = dbs.create_database(server.admin_dsn, "soak", schema=True)
        conn = dbs.connect_retrying(dsn)
        if args.table_settings == "reset":
            for statement in RESET_SQL:
                conn.execute(statement)
        if args.seed:
            conn.execute(SEED_SQL, (NOOP, args.seed))
            conn.execute("VACUUM ANALYZE stagerunner.tasks")
        if args.vacuum == "held":
            holder = dbs.connect_retrying(dsn)
            holder.autocommit = False
            holder.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
            holder.execute("SELECT count(*) FROM stagerunner.tasks")  # the snapshot stays
        env = node_env(dsn, NOOP.split(":")[0], consumers=args.consumers,
                       retention=f"{args.retention:g}", log_level="warning", node_name="soak",
                       child_reuse=args.child_reuse)
        node = NodeProcess(env, workdir / "node.log")
        wait_beating(conn, node)
        log(f"server {server.admin_dsn} ({args.vacuum}); node started; "
            f"{args.rate:g} tasks/s for {args.minutes:g} min, retention {args.retention:g} s")
        samples = feed(conn, node, args, stagerunner, log)
        return {"samples": samples, "start": steady_index(samples, args.retention),
                "node_log_problems": [ln for ln in node.log().splitlines()
                                      if " ERROR " in ln or "Traceback" in ln][:5]}
    finally:
        if holder is not None:
            holder.close()
        if node is not None:
            node.kill()
        if args.keep:
            log(f"kept the server's directory: {workdir}")
            server.stop()
        else:
            server.destroy()


def wait_beating(conn: Any, node: NodeProcess, timeout: float = 60) -> None:
    """Until the node's producer has written its heartbeat (its log is quiet: warnings)."""
    deadline = time.monotonic() + timeout
    while not conn.execute("SELECT count(*) FROM stagerunner.nodes").fetchone()[0]:
        if node.proc.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"the node did not start: {node.log_tail()}")
        time.sleep(0.1)


def feed(conn: Any, node: NodeProcess, args: argparse.Namespace, stagerunner: Any,
         log: Any) -> list[dict[str, float]]:
    """Enqueue at the rate until the time is up, sampling as it goes."""
    started = time.monotonic()
    end = started + args.minutes * 60
    interval = 1.0 / args.rate
    samples: list[dict[str, float]] = []
    enqueue_ms: list[float] = []
    since = conn.execute("SELECT clock_timestamp()").fetchone()[0]
    next_sample = started + args.sample
    sent = 0
    while time.monotonic() < end:
        if node.proc.poll() is not None:
            raise RuntimeError(f"the node exited: {node.log_tail()}")
        t0 = time.perf_counter()
        stagerunner.enqueue(NOOP, [], conn=conn)
        enqueue_ms.append(1000 * (time.perf_counter() - t0))
        sent += 1
        now = time.monotonic()
        if now >= next_sample:
            sample, since = soak_sample(conn, node, since, enqueue_ms,
                                        samples[-1] if samples else None)
            sample["t_s"] = now - started
            sample["rate"] = sent / (now - started)
            samples.append(sample)
            enqueue_ms = []
            next_sample += args.sample
            log(f"t={sample['t_s']:.0f}s total={sample['total_mib']:.1f}MiB "
                f"dead={sample['dead']:.0f} claim_p99={sample.get('claim_p99_ms', 0):.1f}ms")
        delay = started + sent * interval - time.monotonic()
        if delay > 0:
            time.sleep(delay)
    return samples


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="soak", description=__doc__.split("\n\n")[0])
    p.add_argument("--minutes", type=float, default=30.0)
    p.add_argument("--rate", type=float, default=150.0, help="tasks enqueued per second")
    p.add_argument("--retention", type=float, default=60.0, help="STAGERUNNER_RETENTION, s")
    p.add_argument("--consumers", type=int, default=2)
    p.add_argument("--child-reuse", type=int, default=100, help="STAGERUNNER_CHILD_REUSE")
    p.add_argument("--sample", type=float, default=30.0, help="seconds between samples")
    p.add_argument("--vacuum", choices=["on", "held", "off"], default="on")
    p.add_argument("--table-settings", choices=["schema", "reset"], default="schema",
                   help="the tables' storage parameters: schema.sql's, or PostgreSQL's defaults")
    p.add_argument("--seed", type=int, default=0, help="finished tasks in the table at start")
    p.add_argument("--keep", action="store_true", help="keep the server's directory and logs")
    p.add_argument("--json", type=Path)
    args = p.parse_args(argv)
    if args.minutes <= 0 or args.rate <= 0 or args.sample <= 0:
        p.error("--minutes, --rate and --sample must be positive")

    def log(text: str) -> None:
        print(f"[soak] {text}", file=sys.stderr, flush=True)

    def on_signal(signum: int, frame: Any) -> None:
        raise SystemExit(128 + signum)  # unwinds through run()'s clean-up: node, server

    for sig in (signal.SIGTERM, signal.SIGHUP, signal.SIGINT):
        signal.signal(sig, on_signal)

    result = run(args, log)
    samples = result["samples"]
    if not samples:
        print("soak: no sample taken (raise --minutes or lower --sample)")
        return 1
    print(f"stagerunner soak: {args.minutes:g} min at {args.rate:g} tasks/s (achieved "
          f"{samples[-1]['rate']:.1f}), retention {args.retention:g} s, vacuum {args.vacuum}, "
          f"table settings {args.table_settings}, seeded {args.seed:,} rows, "
          f"child reuse {args.child_reuse}, "
          f"{args.consumers} consumers; {time.strftime('%Y-%m-%d %H:%M %Z')}")
    print(render(samples, result["start"]))
    for line in result["node_log_problems"]:
        print(f"node log: {line[:300]}")
    report = {"args": vars(args), "median_claim_p99_ms": median(
        [s["claim_p99_ms"] for s in samples if "claim_p99_ms" in s] or [float("nan")]), **result}
    path = args.json or Path("bench-results") / f"soak-{time.strftime('%Y%m%d-%H%M%S')}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=2, default=str) + "\n")
    print(f"json: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
