"""What a node spends before its first job: ``python -m stagerunner_tools.bench_start``.

Starts ``python -m stagerunner`` again and again (``--starts``) on a database of its own
with one task waiting (``bench_tasks:mark``, which writes the job's wall clock to a
file), and at the moment that file appears reads the CPU every process of the node has
used so far (supervisor, producer, consumers, fork helpers, the resource tracker, the
job child: user + system, reaped children included; PostgreSQL's backends not counted).
On a machine with C cores no overlap of the starts can bring the first job in under
that CPU divided by C: the bound the README's performance section quotes for "first job
after start".
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psycopg

from stagerunner_tools import procfs
from stagerunner_tools.dbs import fresh_database
from stagerunner_tools.nodes import node_env

ADMIN = "postgresql://postgres@127.0.0.1:5432/postgres"
TASK = "stagerunner_tools.bench_tasks:mark"
TICK = os.sysconf("SC_CLK_TCK")


def one_start(dsn: str, consumers: int, mark: Path, timeout: float) -> tuple[float, float, int]:
    """(first job's start after the node's exec, s; the node's CPU by then, s; processes)."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("DELETE FROM stagerunner.tasks")
        conn.execute("INSERT INTO stagerunner.tasks (name, args) VALUES (%s, %s)",
                     [TASK, json.dumps([str(mark)])])
    mark.unlink(missing_ok=True)
    env = node_env(dsn, task_modules="stagerunner_tools.bench_tasks", consumers=consumers)
    started = time.time()
    node = subprocess.Popen([sys.executable, "-m", "stagerunner"], env=env, start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + timeout
        while not (mark.exists() and mark.stat().st_size):
            if node.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"no first job (node exit code {node.poll()})")
            time.sleep(0.001)
        stats = procfs.table()
        mine = [node.pid, *procfs.descendants(node.pid, stats, sessions=True)]
        cpu = sum(stats[p].cpu_ticks for p in mine if p in stats) / TICK
        return float(mark.read_text()) - started, cpu, len(mine)
    finally:
        procfs.kill_tree(node.pid)
        node.wait()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bench_start", description=__doc__.split("\n")[0])
    parser.add_argument("--dsn", default=ADMIN, help="an admin DSN (a database is created)")
    parser.add_argument("--starts", type=int, default=7)
    parser.add_argument("--consumers", type=int, default=2)
    parser.add_argument("--timeout", type=float, default=30.0, help="per start, seconds")
    parser.add_argument("--json", action="store_true", help="print JSON instead of text")
    args = parser.parse_args(argv)
    runs = []
    with fresh_database(args.dsn, "bench_start", schema=True) as dsn, \
            tempfile.TemporaryDirectory() as tmp:
        for _ in range(args.starts):
            runs.append(one_start(dsn, args.consumers, Path(tmp) / "mark", args.timeout))
    cores = os.cpu_count() or 1
    first, cpu = statistics.median(r[0] for r in runs), statistics.median(r[1] for r in runs)
    if args.json:
        print(json.dumps({"cores": cores, "first_job_s": [r[0] for r in runs],
                          "cpu_s": [r[1] for r in runs], "processes": [r[2] for r in runs]}))
        return 0
    for first_s, cpu_s, n in runs:
        print(f"first job {first_s:.3f} s after exec; {n} processes had used {cpu_s:.2f} s of CPU")
    print(f"median: first job {first:.3f} s; CPU {cpu:.2f} s, so at least {cpu / cores:.3f} s "
          f"on {cores} cores")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
