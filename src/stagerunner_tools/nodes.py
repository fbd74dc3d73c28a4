"""A node as a subprocess (``python -m stagerunner run`` in its own session), for the
tests, the chaos run and the benchmark: its environment, its log, its stages, stopping
it, and killing everything it left behind.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from stagerunner_tools import procfs

ROOT = Path(__file__).resolve().parents[2]  # the repository: tests, src, bin
SCRUBBED = ("DATABASE_URL", "PGHOST", "PGDATABASE", "PGSERVICE", "PGUSER", "PGPASSWORD", "PGPORT")


def node_env(dsn: str, task_modules: str = "tests.tasks", **overrides: Any) -> dict[str, str]:
    """This process's environment without any database or STAGERUNNER_* setting, plus
    the node's: the DSN, the task modules, 2 consumers, a 0.5 s poll, and `overrides`
    (``consumers=4`` becomes STAGERUNNER_CONSUMERS=4). The repository and its src/ are on
    the path so that consumers can import tests.tasks and the chaos tasks."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("STAGERUNNER_") and k not in SCRUBBED}
    path = os.pathsep.join([str(ROOT), str(ROOT / "src"), env.get("PYTHONPATH", "")])
    env.update({
        "STAGERUNNER_DATABASE_URL": dsn,
        "STAGERUNNER_TASK_MODULES": task_modules,
        "STAGERUNNER_CONSUMERS": "2",
        "STAGERUNNER_POLL_INTERVAL": "0.5",
        "PYTHONPATH": path.rstrip(os.pathsep),
    })
    env.update({f"STAGERUNNER_{k.upper()}": str(v) for k, v in overrides.items()})
    return env


class NodeProcess:
    """One node. ``start`` waits for its ``node started`` line."""

    def __init__(self, env: dict[str, str], log_path: Path) -> None:
        self.env = env
        self.log_path = log_path
        with open(log_path, "wb") as out:
            self.proc = subprocess.Popen([sys.executable, "-m", "stagerunner", "run"], cwd=ROOT,
                                         env=env, stdin=subprocess.DEVNULL, stdout=out,
                                         stderr=subprocess.STDOUT, start_new_session=True)
        self.started_wall = time.time()

    @property
    def pid(self) -> int:
        return self.proc.pid

    def wait_started(self, timeout: float = 30) -> bool:
        """Until the node logged that it started (True) or exited (False)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if "node started" in self.log():
                return True
            if self.proc.poll() is not None:
                return False
            time.sleep(0.05)
        raise TimeoutError(f"the node did not start within {timeout:g} s: {self.log_tail()}")

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def log_tail(self, lines: int = 15) -> str:
        return " | ".join(self.log().splitlines()[-lines:]) or "(empty log)"

    def events(self, name: str) -> list[str]:
        """Log lines of one event, in the text or the JSON format."""
        return [line for line in self.log().splitlines()
                if f"event={name}" in line.split() or f'"event": "{name}"' in line]

    def tree(self) -> list[int]:
        """Every live process of the node (the sessions its stages lead included)."""
        return procfs.descendants(self.proc.pid, sessions=True)

    def stages(self) -> tuple[int | None, list[int]]:
        """(producer pid, consumer pids): the supervisor's children and its fork server's,
        told apart by their process titles."""
        titles = {p: procfs.cmdline(p) for p in procfs.stage_children(self.proc.pid)
                  if not procfs.is_fork_server(p)}
        producers = [p for p, t in titles.items() if "producer" in t]
        return (producers[0] if producers else None), [
            p for p, t in titles.items() if "consumer" in t]

    def wait_stages(self, consumers: int, timeout: float = 20) -> tuple[int, list[int]]:
        """Until the producer and `consumers` consumers are up; (producer, consumers)."""
        deadline = time.monotonic() + timeout
        while True:
            producer, found = self.stages()
            if producer and len(found) == consumers:
                return producer, found
            if time.monotonic() > deadline:
                raise AssertionError(f"stages not up within {timeout:g} s: producer={producer} "
                                     f"consumers={found}")
            time.sleep(0.1)

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30) -> int:
        """Send `sig` and wait for the exit code (TimeoutExpired if it does not exit)."""
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        return self.proc.wait(timeout=timeout)

    def kill(self) -> list[int]:
        """SIGKILL the whole node at once (its group, its tree, its session); idempotent.
        The pids that were alive."""
        tree = self.tree()
        if self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        for pid in tree + self.tree():
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            pass
        return tree


# What a node's tree must look like -----------------------------------------------------

def spares(consumer: int) -> list[int]:
    """A consumer's job children: the children of its fork helper."""
    return [kid for forker in procfs.children(consumer) for kid in procfs.children(forker)]


def consumer_of(job: int) -> int | None:
    """The consumer a job child works for: job child <- fork helper <- consumer."""
    forker = procfs.ppid_of(job)
    return procfs.ppid_of(forker) if forker else None


def job_leftovers(node: NodeProcess, seen: dict[int, float]) -> list[str]:
    """What is wrong with the node's tree once its jobs are over: job processes we saw
    (pid -> when) still alive, or a consumer whose fork helper holds more than its one
    idle spare child."""
    problems = [f"job process {p} still alive" for p, t in seen.items() if procfs.alive_since(p, t)]
    _, consumers = node.stages()
    for consumer in consumers:
        kids = procfs.children(consumer)
        if len(kids) > 1:
            problems.append(f"consumer {consumer} has children {kids}")
        for forker in kids:
            jobs = procfs.children(forker)
            if len(jobs) > 1:
                problems.append(f"fork helper {forker} of {consumer} has children {jobs}")
            for kid in jobs:
                if not procfs.comm(kid).startswith("sr-job-"):
                    problems.append(f"{kid} under {forker} is no job child")
                elif procfs.descendants(kid):
                    problems.append(f"spare child {kid} of {consumer} has children")
    return problems


def owners(node: NodeProcess) -> set[str]:
    """Every producer owner this node logged (node.started, db.connected)."""
    return set(re.findall(r"\bowner=(\S+)", node.log()))
