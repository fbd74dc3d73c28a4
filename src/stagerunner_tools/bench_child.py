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

The job is written into the pipe before the fork, so no child ever waits. The difference
between ``exit`` and ``job`` is what a job costs on top of a bare fork; the README's
performance section quotes it.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
from collections.abc import Callable

import stagerunner.consumer  # noqa: F401  what a consumer has imported before it forks
from stagerunner import child as jobchild
from stagerunner import procs, registry

MODULES = ("stagerunner_tools.bench_tasks",)
NOOP = "stagerunner_tools.bench_tasks:noop"
LIMITS = jobchild.Limits(modules=MODULES)


def _resolve(name: str) -> Callable[..., object]:
    return registry.resolve(name, MODULES).func  # the fork helper's resolver is faster still


def _group(job_r: int, result_w: int, parent: int) -> None:
    os.setpgrp()
    procs.die_with_parent(parent)


def _setup(job_r: int, result_w: int, parent: int) -> None:
    jobchild.prepare_child(parent, LIMITS, "sr-job-bench")


def _read(job_r: int, result_w: int, parent: int) -> None:
    _setup(job_r, result_w, parent)
    jobchild.read_job(job_r)


def _job(job_r: int, result_w: int, parent: int) -> None:
    jobchild.child_main(job_r, result_w, parent, LIMITS, _resolve, "sr-job-bench")


STEPS: dict[str, Callable[[int, int, int], None] | None] = {
    "exit": None, "group": _group, "setup": _setup, "read": _read, "job": _job}


def measure(step: str, forks: int) -> tuple[float, float]:
    """(child CPU ms, parent CPU ms) per fork."""
    body = STEPS[step]
    job = jobchild.frame(json.dumps([1, NOOP, "[]"]).encode())
    before = os.times()
    for _ in range(forks):
        job_r, job_w = os.pipe()
        result_r, result_w = os.pipe()
        os.write(job_w, job)
        parent = os.getpid()
        pid = os.fork()
        if pid == 0:
            try:
                if body is not None:
                    body(job_r, result_w, parent)
            finally:
                os._exit(0)
        os.waitpid(pid, 0)
        for fd in (job_r, job_w, result_r, result_w):
            os.close(fd)
    after = os.times()
    child = (after.children_user - before.children_user
             + after.children_system - before.children_system)
    own = after.user - before.user + after.system - before.system
    return child / forks * 1000, own / forks * 1000


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bench_child", description=__doc__.split("\n")[0])
    parser.add_argument("--forks", type=int, default=1000, help="children per step and run")
    parser.add_argument("--runs", type=int, default=3, help="interleaved runs (median)")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    args = parser.parse_args(argv)
    registry.load(MODULES)
    procs.become_subreaper()  # as a fork helper is; also loads libc for prctl
    jobchild.prepare_parent()  # as a fork helper does once, before its children
    samples: dict[str, list[tuple[float, float]]] = {step: [] for step in STEPS}
    for _ in range(args.runs):
        for step in STEPS:
            samples[step].append(measure(step, args.forks))
    with open("/proc/self/status") as f:
        rss_kib = next(int(line.split()[1]) for line in f if line.startswith("VmRSS:"))
    result = {step: {"child_ms": statistics.median(c for c, _ in runs),
                     "parent_ms": statistics.median(p for _, p in runs)}
              for step, runs in samples.items()}
    if args.json:
        print(json.dumps({"rss_mib": rss_kib / 1024, "steps": result}))
        return 0
    print(f"job child CPU by step: {args.forks} forks x {args.runs} runs (median), "
          f"forking process {rss_kib / 1024:.1f} MiB")
    print(f"{'step':8} {'child ms':>9} {'parent ms':>10}")
    for step, values in result.items():
        print(f"{step:8} {values['child_ms']:9.3f} {values['parent_ms']:10.3f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
