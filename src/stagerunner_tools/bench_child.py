"""Where a job child's CPU goes: ``python -m stagerunner_tools.bench_child [--forks N] [--runs R]``.

This process imports what a consumer imports (stagerunner.consumer and the bench task
module), so its forks cost what a consumer's fork helper's do. It forks N children at
each step below and reports the children's CPU (user + system, from ``os.times``) and
its own per fork, as the median of R interleaved runs:

    exit      the child calls ``os._exit(0)`` at once: fork, CPython's after-fork work, exit
    group     + its own process group and the parent-death signal
    setup     + its ``comm`` (stdio on fds 1-2, default SIGTERM/SIGINT and the job log
              routing are set up once in the forking process, as in a fork helper)
    read      + reading and decoding its job from the job pipe
    job       the real job child (``jobchild.child_main``): + running a no-op task,
              encoding and writing the result

The baseline ("a bare interpreter") runs the ``exit`` step by ``os.fork`` in a fresh
interpreter that imported nothing else, as the peers harness's fork ceiling does (its
probe processes hold a few MiB): the cost of a fork grows with the memory and the
mappings (each shared library adds five) of the process that forks, so a job child,
forked from a process that holds the runtime and the task modules, starts above it.

Each step runs twice: forked by ``os.fork`` (CPython's at-fork hooks run in the child)
and by ``forking.bare_fork`` (they do not: what a node's fork helper does when no module
needs them). Besides CPU, each child's minor page faults (``wait4``'s ``ru_minflt``: pages
it wrote that it shared with its parent, plus first touches), which do not depend on the
machine's load. The job is written into the pipe before the fork, so no child ever waits.
The difference between ``exit`` and ``job`` is what a job costs on top of a bare fork; the
README's performance section quotes it.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from collections.abc import Callable

import stagerunner.consumer  # noqa: F401  what a consumer has imported before it forks
from stagerunner import child as jobchild
from stagerunner import forking, procs, registry
from stagerunner_tools import procfs

MODULES = ("stagerunner_tools.bench_tasks",)
NOOP = "stagerunner_tools.bench_tasks:noop"
LIMITS = jobchild.Limits(modules=MODULES)


def _resolve(name: str) -> Callable[..., object]:
    return registry.resolve(name, MODULES).func  # the fork helper's resolver is faster still


def _group(job_r: int, result_w: int, parent: int) -> None:
    os.setpgrp()
    procs.die_with_parent(parent)


def _setup(job_r: int, result_w: int, parent: int) -> None:
    jobchild.prepare_child(parent, LIMITS, b"sr-job-bench")


def _read(job_r: int, result_w: int, parent: int) -> None:
    _setup(job_r, result_w, parent)
    jobchild.read_job(job_r)


def _job(job_r: int, result_w: int, parent: int) -> None:
    jobchild.child_main(job_r, result_w, parent, LIMITS, _resolve, b"sr-job-bench")


STEPS: dict[str, Callable[[int, int, int], None] | None] = {
    "exit": None, "group": _group, "setup": _setup, "read": _read, "job": _job}


def measure(step: str, forks: int, bare: bool) -> tuple[float, float, float]:
    """(child CPU ms, parent CPU ms, child minor faults: median) per fork."""
    body = STEPS[step]
    fork = forking.bare_fork if bare else os.fork
    job = jobchild.frame(json.dumps([1, NOOP, "[]"]).encode())
    faults = []
    before = os.times()
    for _ in range(forks):
        job_r, job_w = os.pipe()
        result_r, result_w = os.pipe()
        os.write(job_w, job)
        parent = os.getpid()
        pid = fork()
        if pid == 0:
            try:
                if body is not None:
                    body(job_r, result_w, parent)
            finally:
                os._exit(0)
        faults.append(os.wait4(pid, 0)[2].ru_minflt)
        for fd in (job_r, job_w, result_r, result_w):
            os.close(fd)
    after = os.times()
    child = (after.children_user - before.children_user
             + after.children_system - before.children_system)
    own = after.user - before.user + after.system - before.system
    return child / forks * 1000, own / forks * 1000, statistics.median(faults)


_BARE = """
import os, sys, time
forks = int(sys.argv[1]); faults = []; before = os.times()
for _ in range(forks):
    pid = os.fork()
    if pid == 0:
        os._exit(0)
    faults.append(os.wait4(pid, 0)[2].ru_minflt)
after = os.times(); faults.sort()
print((after.children_user - before.children_user + after.children_system
       - before.children_system) / forks * 1000,
      (after.user - before.user + after.system - before.system) / forks * 1000,
      faults[len(faults) // 2])
"""


def bare_interpreter(forks: int) -> tuple[float, float, float]:
    """The ``exit`` step by ``os.fork`` from a fresh interpreter that imported nothing
    else: (child CPU ms, parent CPU ms, child minor faults) per fork."""
    out = subprocess.run([sys.executable, "-c", _BARE, str(forks)], capture_output=True,
                         text=True, check=True).stdout.split()
    return float(out[0]), float(out[1]), float(out[2])


def _footprint() -> tuple[float, int]:
    """This process's resident MiB and its number of mappings."""
    with open("/proc/self/maps") as f:
        return (procfs.rss_kib(os.getpid()) or 0) / 1024, sum(1 for _ in f)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bench_child", description=__doc__.split("\n")[0])
    parser.add_argument("--forks", type=int, default=1000, help="children per step and run")
    parser.add_argument("--runs", type=int, default=3, help="interleaved runs (median)")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    args = parser.parse_args(argv)
    registry.load(MODULES)
    procs.become_subreaper()  # as a fork helper is; also loads libc for prctl
    jobchild.prepare_parent()  # as a fork helper does once, before its children
    kinds = {"fork": False, "bare": True}
    samples: dict[str, list[tuple[float, float, float]]] = {
        f"{step}/{kind}": [] for step in STEPS for kind in kinds}
    samples["bare-interpreter"] = []
    for _ in range(args.runs):
        samples["bare-interpreter"].append(bare_interpreter(args.forks))
        for step in STEPS:
            for kind, bare in kinds.items():
                samples[f"{step}/{kind}"].append(measure(step, args.forks, bare))
    rss_mib, maps = _footprint()
    result = {key: {"child_ms": statistics.median(c for c, _, _ in runs),
                    "parent_ms": statistics.median(p for _, p, _ in runs),
                    "child_faults": statistics.median(n for _, _, n in runs)}
              for key, runs in samples.items()}
    if args.json:
        print(json.dumps({"rss_mib": rss_mib, "mappings": maps, "steps": result}))
        return 0
    print(f"job child CPU by step: {args.forks} forks x {args.runs} runs (median), "
          f"forking process {rss_mib:.1f} MiB in {maps} mappings; os.fork / bare fork")
    print(f"{'step':8} {'child ms':>15} {'child faults':>14} {'parent ms':>15}")
    for step in STEPS:
        a, b = result[f"{step}/fork"], result[f"{step}/bare"]
        print(f"{step:8} {a['child_ms']:7.3f} {b['child_ms']:7.3f} {a['child_faults']:7.0f} "
              f"{b['child_faults']:6.0f} {a['parent_ms']:7.3f} {b['parent_ms']:7.3f}")
    base = result["bare-interpreter"]
    print(f"exit, os.fork from a bare interpreter (the peers' fork ceiling's kind of probe): "
          f"child {base['child_ms']:.3f} ms, {base['child_faults']:.0f} faults, parent "
          f"{base['parent_ms']:.3f} ms")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
