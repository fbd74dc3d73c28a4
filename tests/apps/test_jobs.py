"""Application tasks on a real node: async tasks, the job context, logging with task ids,
per-task retry rules and snoozes, hooks, waiting for results, and a task module's own
at-fork hooks (which decide how its job children are forked)."""

from __future__ import annotations

import json
import os
import signal
import time
from datetime import datetime, timezone

import pytest

import stagerunner
from stagerunner import ResultTimeout, TaskFailed
from stagerunner_tools.invariants import check_rows, insert_rows, wait_terminal
from tests.apps import app_tasks
from tests.helpers import eventually

pytestmark = [pytest.mark.system, pytest.mark.timeout(90)]
MODULES = "tests.apps.app_tasks"


@pytest.fixture
def node(start_node, tmp_path):
    return start_node(task_modules=MODULES, extra_env={"HOOK_LOG": str(tmp_path / "hooks.jsonl")})


def _hooks(tmp_path):
    path = tmp_path / "hooks.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def test_an_async_task_runs_on_an_event_loop_in_its_child(node, conn, db):
    task_id = app_tasks.fetch.options(conn=conn).enqueue(3, delay=0.01)
    assert stagerunner.result(task_id, timeout=30, dsn=db) == {"n": 3, "loop": "_UnixSelectorEventLoop"}


def test_an_async_task_past_its_deadline_is_killed_and_the_timeout_hook_runs(node, conn, db, get_task,
                                                                             tmp_path):
    task_id = app_tasks.async_forever.options(conn=conn).enqueue()
    with pytest.raises(TaskFailed) as failed:
        stagerunner.result(task_id, timeout=30, dsn=db)
    assert failed.value.status == "timeout" and "deadline of 0.5 s" in failed.value.error
    _, consumers = node.stages()
    hook = eventually(lambda: [h for h in _hooks(tmp_path) if h["hook"] == "timeout"])
    assert hook[0]["task_id"] == task_id and hook[0]["pid"] in consumers  # run by the consumer


def test_a_hook_that_raises_is_logged_and_changes_nothing(start_node, conn, db, tmp_path):
    node = start_node(task_modules=MODULES, extra_env={
        "HOOK_LOG": str(tmp_path / "hooks.jsonl"), "HOOK_RAISE": "1"})
    ok = app_tasks.chatty.options(conn=conn).enqueue("hi")
    bad = app_tasks.fails.options(conn=conn).enqueue("boom")
    slow = app_tasks.async_forever.options(conn=conn).enqueue()
    assert stagerunner.result(ok, timeout=30, dsn=db) == "hi"
    with pytest.raises(TaskFailed) as failed:
        stagerunner.result(bad, timeout=30, dsn=db)
    assert failed.value.status == "error" and "RuntimeError: boom" in failed.value.error
    with pytest.raises(TaskFailed) as late:
        stagerunner.result(slow, timeout=30, dsn=db)
    assert late.value.status == "timeout"
    # the hooks registered after the broken one still ran, each where it runs
    ran = eventually(lambda: (h := {(x["hook"], x["task_id"]) for x in _hooks(tmp_path)})
                     >= {("success", ok), ("failure", bad), ("timeout", slow)} and h)
    assert ("failure", ok) not in ran
    logged = eventually(lambda: (e := node.events("hook.failed")) and len(e) >= 3 and e)
    for kind in ("success", "failure", "timeout"):
        assert any(f"hook={kind}" in line and "LookupError: a broken hook" in line
                   and "function=_broken" in line for line in logged), (kind, logged)


def test_a_job_knows_its_context(node, conn, db, get_task):
    task_id = app_tasks.whoami.options(conn=conn, queue="default").enqueue()
    seen = stagerunner.result(task_id, timeout=30, dsn=db)
    row = get_task(task_id)
    assert (seen["id"], seen["name"], seen["attempt"], seen["max_attempts"], seen["queue"]) == (
        task_id, "tests.apps.app_tasks:whoami", 1, 4, "default")
    assert datetime.fromisoformat(seen["enqueued_at"]) == row["created_at"].astimezone(timezone.utc)
    deadline = datetime.fromisoformat(seen["deadline"]).timestamp()
    assert 0.5 < deadline - seen["now"] <= 1.0  # the default 1 s deadline, counted from the start
    started = datetime.fromisoformat(seen["started_at"])  # when this run began, in UTC
    assert started.tzinfo == timezone.utc and row["created_at"] <= started
    assert 0 <= seen["now"] - started.timestamp() < 0.5 and deadline - started.timestamp() <= 1.0


def test_current_outside_a_job_says_so():
    with pytest.raises(RuntimeError, match="only available inside a running job"):
        stagerunner.current()


@pytest.mark.parametrize("fmt", ["text", "json"])
def test_a_jobs_own_log_records_reach_the_node_log_with_its_task_id_and_attempt(
        start_node, conn, db, fmt):
    node = start_node(task_modules=MODULES, log_format=fmt)
    task_id = app_tasks.chatty.options(conn=conn).enqueue("hello")
    assert stagerunner.result(task_id, timeout=30, dsn=db) == "hello"
    def job_lines() -> list[str]:
        return [line for line in node.log().splitlines()
                if "working on hello" in line or "almost done" in line]

    eventually(lambda: len(job_lines()) == 2)
    lines = job_lines()
    if fmt == "json":
        docs = [json.loads(line) for line in lines]
        assert {d["msg"] for d in docs} == {"working on hello", "almost done"}
        assert all(d["task_id"] == task_id and d["attempt"] == 1 and d["logger"] == "myapp.jobs"
                   for d in docs)
        assert [d["step"] for d in docs if d["msg"] == "working on hello"] == ["one"]
    else:
        assert all(f"task_id={task_id}" in line and "attempt=1" in line and "myapp.jobs" in line
                   for line in lines)


def test_retry_on_retries_only_those_exceptions(node, conn, db, get_task):
    retried = app_tasks.flaky.options(conn=conn).enqueue("connection")
    not_retried = app_tasks.flaky.options(conn=conn).enqueue("value")
    discarded = app_tasks.picky.options(conn=conn).enqueue("k")
    for task_id in (retried, not_retried, discarded):
        with pytest.raises(TaskFailed):
            stagerunner.result(task_id, timeout=30, dsn=db)
    assert get_task(retried)["attempts"] == 5
    assert get_task(not_retried)["attempts"] == 1
    assert get_task(discarded)["attempts"] == 1
    assert "ValueError: bad input" in get_task(not_retried)["last_error"]


def test_a_snooze_runs_the_task_again_later_without_spending_an_attempt(node, conn, db, get_task,
                                                                       tmp_path):
    task_id = app_tasks.snoozer.options(conn=conn).enqueue(str(tmp_path / "runs"), 2)
    assert stagerunner.result(task_id, timeout=30, dsn=db) == 1  # still attempt 1 of 1
    row = get_task(task_id)
    assert (row["status"], row["attempts"], row["errors"]) == ("success", 1, [])
    assert (tmp_path / "runs").read_text() == "3"
    assert "task.snoozed" in node.log()


def test_success_and_failure_hooks_run_in_the_child_and_are_flushed(node, conn, db, tmp_path):
    good = app_tasks.add.options(conn=conn).enqueue(2, 3)
    bad = app_tasks.fails.options(conn=conn).enqueue("nope")
    assert stagerunner.result(good, timeout=30, dsn=db) == 5
    with pytest.raises(TaskFailed):
        stagerunner.result(bad, timeout=30, dsn=db)
    hooks = {h["task_id"]: h for h in _hooks(tmp_path)}  # written before the reply was sent
    assert hooks[good]["hook"] == "success" and hooks[good]["result"] == 5
    assert hooks[bad]["hook"] == "failure" and hooks[bad]["exc"] == "RuntimeError"
    assert hooks[bad]["last"] == "RuntimeError: nope"
    _, consumers = node.stages()
    assert hooks[good]["pid"] not in consumers


def test_the_lost_hook_runs_in_the_producer_when_a_consumer_dies_under_a_job(node, conn, tmp_path):
    pidfile = tmp_path / "job.pid"
    task_id = app_tasks.nap.options(conn=conn).enqueue(str(pidfile), 30)
    job = int(eventually(lambda: pidfile.exists() and pidfile.read_text()))
    from stagerunner_tools.nodes import consumer_of

    os.kill(consumer_of(job), signal.SIGKILL)
    hook = eventually(lambda: [h for h in _hooks(tmp_path) if h["hook"] == "lost"], timeout=15)
    producer, _ = node.stages()
    assert hook[0]["task_id"] == task_id and hook[0]["pid"] == producer
    stagerunner.cancel([task_id], conn=conn)


def test_results_raise_a_typed_error_and_time_out_cleanly(node, conn, db):
    task_id = app_tasks.fails.options(conn=conn).enqueue("broken")
    with pytest.raises(TaskFailed) as failed:
        stagerunner.result(task_id, timeout=30, dsn=db)
    assert failed.value.task_id == task_id and "RuntimeError: broken" in failed.value.error
    waiting = app_tasks.add.options(conn=conn, delay=3600).enqueue(1, 1)
    started = time.monotonic()
    with pytest.raises(ResultTimeout):
        stagerunner.result(waiting, timeout=0.3, dsn=db)
    assert time.monotonic() - started < 2


def test_the_async_result_waits_without_blocking_the_loop(node, conn, db):
    import asyncio

    async def main() -> tuple[int, object]:
        ticks = 0

        async def ticker() -> None:
            nonlocal ticks
            while True:
                ticks += 1
                await asyncio.sleep(0.01)

        tick = asyncio.create_task(ticker())
        task_id = app_tasks.fetch.options(conn=conn).enqueue(5, 0.3)
        value = await stagerunner.aresult(task_id, timeout=30, dsn=db)
        tick.cancel()
        return ticks, value

    ticks, value = asyncio.run(main())
    assert value == {"n": 5, "loop": "_UnixSelectorEventLoop"}
    assert ticks >= 10


def test_a_node_forks_bare_without_foreign_hooks_and_runs_them_when_a_module_has_one(
        conn, start_node):
    node = start_node(consumers=1, task_modules="tests.tasks")
    ids = insert_rows(conn, "tests.tasks:fork_probe", [[]] * 4)
    wait_terminal(conn, ids, timeout=30, node=node)
    results = [r["result"] for r in check_rows(conn, ids).values()]
    assert all(r is not None for r in results), check_rows(conn, ids)
    assert len({r["pid"] for r in results}) == 4 and len({r["random"] for r in results}) == 4
    assert [_fork_of(line) for line in node.events("forker.fork")] == ["bare"]
    node.kill()

    hooked = start_node(consumers=1, task_modules="tests.tasks,tests.fork_hook_tasks")
    ids = insert_rows(conn, "tests.fork_hook_tasks:hook_ran", [[]] * 2)
    wait_terminal(conn, ids, timeout=30, node=hooked)
    assert [r["result"] for r in check_rows(conn, ids).values()] == [True, True]  # it ran
    [line] = hooked.events("forker.fork")
    assert _fork_of(line) == "os.fork" and "modules=tests.fork_hook_tasks" in line


def _fork_of(line: str) -> str:
    return next(w.partition("=")[2] for w in line.split() if w.startswith("fork="))
