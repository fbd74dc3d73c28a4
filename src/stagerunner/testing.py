"""A pytest plugin for testing your own tasks (registered through the ``pytest11`` entry
point, so installing stagerunner makes its fixtures available).

``stagerunner_inline``: ``.enqueue()`` (and ``stagerunner.enqueue``, ``aenqueue``...) runs the
task at once, in the test's process, through the same JSON round trip and signature
check as a real enqueue, and returns its outcome: an ``int`` (a made-up id) that also
carries ``status`` ("success" / "error"), ``result`` (decoded) and ``error``. No
database, no child process, no deadline: for unit-testing a task's logic.

``stagerunner_node``: a real node (``python -m stagerunner``) against your test database,
running your task modules; ``stagerunner_node.drain()`` waits until no task is waiting or
running and returns the finished rows since the fixture started. The database comes
from ``STAGERUNNER_DATABASE_URL`` (or the ``stagerunner_database_url`` ini option), the
modules from ``STAGERUNNER_TASK_MODULES`` (or ``stagerunner_task_modules``); without a
database it fails naming the setting: nothing starts an embedded server behind a
test's back.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from typing import Any

import pytest

from stagerunner import enqueueing, registry

RESULT_MAX_BYTES = 1 << 20


class InlineOutcome(int):
    """What ``.enqueue()`` returns in inline mode: an id that also says how the run ended."""

    status: str
    result: Any
    error: str | None

    def __new__(cls, task_id: int, status: str, result: Any, error: str | None) -> InlineOutcome:
        made = super().__new__(cls, task_id)
        made.status, made.result, made.error = status, result, error
        return made

    def __repr__(self) -> str:
        return f"<task {int(self)} {self.status}: {self.error or json.dumps(self.result)}>"


class Inline:
    """Runs enqueued tasks at once; ``outcomes`` lists every run, in order."""

    def __init__(self) -> None:
        self.outcomes: list[InlineOutcome] = []

    def run_many(self, items: list[tuple[Any, Any]], options: dict[str, Any]) -> list[int]:
        return [self.run(name, args, options) for name, args in items]

    def run(self, target: Any, args: Any, options: dict[str, Any]) -> InlineOutcome:
        from stagerunner import child, running

        name = enqueueing.split_target(target, None, None)[0]
        spec = registry.lookup(name) or _import(name)
        text = enqueueing.to_json(name, [] if args is None else args)  # the JSON round trip
        registry.check_arguments(spec, text)  # what a consumer refuses, refused here
        task_id = len(self.outcomes) + 1
        running.enter([task_id, name, text, 1, spec.max_attempts or registry.MAX_ATTEMPTS_DEFAULT,
                       options.get("queue") or spec.queue, None, None])
        try:
            reply = child.run_job(spec, text, RESULT_MAX_BYTES)
        finally:
            running.leave()
        ok = reply[0] == "ok"
        outcome = InlineOutcome(task_id, "success" if ok else "error",
                                json.loads(reply[1]) if ok else None, None if ok else reply[1])
        self.outcomes.append(outcome)
        return outcome


def _import(name: str) -> registry.Spec:
    import importlib

    importlib.import_module(name.partition(":")[0])
    spec = registry.lookup(name)
    if spec is None:
        raise registry.UnknownTask(f"unknown task {name!r}: no @task of that name")
    return spec


@pytest.fixture
def stagerunner_inline() -> Iterator[Inline]:
    """Inline mode for this test: enqueue runs the task at once and returns its outcome."""
    inline = Inline()
    previous = enqueueing.INLINE[0]
    enqueueing.INLINE[0] = inline
    try:
        yield inline
    finally:
        enqueueing.INLINE[0] = previous


class Node:
    """A real node against the test database; ``drain()`` runs everything enqueued."""

    def __init__(self, dsn: str, modules: str, env: dict[str, str]) -> None:
        from stagerunner import migrations, store

        self.dsn = dsn
        with store.connect(dsn) as conn:
            migrations.install_schema(conn)
            self.baseline = store.query(conn, "max_task_id")[0]["id"]
        self.log: list[str] = []
        self.started = threading.Event()
        self.process = subprocess.Popen(
            [sys.executable, "-m", "stagerunner", "run"], stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
            env={**env, "STAGERUNNER_DATABASE_URL": dsn, "STAGERUNNER_TASK_MODULES": modules})
        threading.Thread(target=self._read, daemon=True).start()
        if not self.started.wait(30) or self.process.poll() is not None:
            self.stop()
            raise RuntimeError("the stagerunner node did not start:\n" + "".join(self.log[-20:]))

    def _read(self) -> None:
        assert self.process.stderr is not None
        for line in self.process.stderr:
            self.log.append(line)
            if "node.started" in line or "node started" in line:
                self.started.set()

    def drain(self, timeout: float = 30.0) -> list[dict[str, Any]]:
        """Wait until no task is waiting or running; the tasks finished since the fixture
        started (id, name, status, result, last_error), oldest first."""
        import time

        from stagerunner import store

        deadline = time.monotonic() + timeout
        with store.connect(self.dsn) as conn:
            store.query(conn, "listen_results")
            while True:
                live = store.query(conn, "count_unfinished")[0]["n"]
                if not live:
                    break
                if time.monotonic() > deadline or self.process.poll() is not None:
                    raise AssertionError(f"{live} task(s) still waiting or running after "
                                         f"{timeout:g} s:\n" + "".join(self.log[-20:]))
                for _ in conn.notifies(timeout=1.0, stop_after=1):  # a task finished
                    pass
            return store.query(conn, "tasks_since", {"id": self.baseline})

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addini("stagerunner_database_url", "test database for the stagerunner_node fixture")
    parser.addini("stagerunner_task_modules", "task modules the stagerunner_node fixture runs")


@pytest.fixture
def stagerunner_node(request: pytest.FixtureRequest) -> Iterator[Node]:
    """A real node on the test database; call ``.drain()`` after enqueueing."""
    dsn = os.environ.get("STAGERUNNER_DATABASE_URL") or request.config.getini(
        "stagerunner_database_url")
    modules = os.environ.get("STAGERUNNER_TASK_MODULES") or request.config.getini(
        "stagerunner_task_modules")
    if not dsn:
        pytest.fail("stagerunner_node needs a test database: set STAGERUNNER_DATABASE_URL or "
                    "the stagerunner_database_url ini option (no embedded server is started)")
    env = {**os.environ, "STAGERUNNER_CONSUMERS": os.environ.get("STAGERUNNER_CONSUMERS", "2")}
    env["PYTHONPATH"] = os.pathsep.join([os.getcwd(), *sys.path])
    node = Node(str(dsn), str(modules), env)
    try:
        yield node
    finally:
        node.stop()
