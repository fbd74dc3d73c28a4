"""Hostile rows inserted straight into the table: nothing outside the allowed modules is
ever imported or run, and each row ends in ``error`` saying why (never retried)."""

from __future__ import annotations

import psycopg
import pytest

from stagerunner_tools.invariants import check_rows, insert_rows, rows, wait_terminal
from tests.helpers import assert_no_job_leftovers

pytestmark = [pytest.mark.system, pytest.mark.timeout(120)]

REFUSED = ("unknown task", "invalid task name", "not in STAGERUNNER_TASK_MODULES")

# name -> a fragment its last_error must hold (None: any of REFUSED)
NAMES = {
    "tests.tasks:nope": "unknown task 'tests.tasks:nope'",
    "nope": "unknown task",
    "tests.sentinel_module:run": "unknown task",
    "tests.sentinel_module": "unknown task",
    "tests.other_tasks:outside": None,
    "stagerunner.examples:greet": None,
    "os:system": "unknown task 'os:system'",
    "builtins:eval": "unknown task",
    "subprocess:run": "unknown task",
    "importlib:import_module": "unknown task",
    "tests.tasks:system": "unknown task",          # re-exported from os
    "tests.tasks:json": "unknown task",            # a module the task module imports
    "tests.tasks:undecorated": "unknown task",
    "tests.tasks:_private": "private (underscore) names never run",
    "tests.tasks:__init__": "invalid task name",
    "tests.tasks:ok.__globals__": "invalid task name",
    "tests.tasks:ok:extra": "invalid task name",
    "../../etc/passwd": "invalid task name",
    "tests.tasks:ok\n": None,
    " tests.tasks:ok": "invalid task name",
    "x" * 255: "unknown task",
}

# (name, args as JSON, fragment of last_error)
BAD_ARGUMENTS = [
    ("tests.tasks:posonly", {"a": 1, "b": 2}, "positional only"),
    ("tests.tasks:add", [1, 2, 3], "too many positional arguments"),
    ("tests.tasks:add", [1], "missing a required argument: 'b'"),
    ("tests.tasks:add", {"a": 1, "b": 2, "c": 3}, "unexpected keyword argument 'c'"),
    ("tests.tasks:ok", [1], "too many positional arguments"),
    ("tests.tasks:ok", {"x": 1}, "unexpected keyword argument 'x'"),
]


def test_rows_naming_anything_but_a_registered_task_end_in_error_and_import_nothing(
        conn, start_node, tmp_path):
    mark = tmp_path / "sentinel-imported"
    ids = {name: insert_rows(conn, name, [[]])[0] for name in NAMES}
    good = insert_rows(conn, "tests.tasks:add", [[i, 1] for i in range(5)])
    node = start_node(extra_env={"SENTINEL_MARK": str(mark)})

    wait_terminal(conn, [*ids.values(), *good], timeout=60, node=node)
    found = check_rows(conn, [*ids.values(), *good])
    for name, tid in ids.items():
        r = found[tid]
        assert (r["status"], r["attempts"], r["lost"]) == ("error", 1, 0), (name, r)
        wanted = NAMES[name]
        if wanted is None:
            assert any(f in r["last_error"] for f in REFUSED), (name, r["last_error"])
        else:
            assert wanted in r["last_error"], (name, r["last_error"])
    assert [found[i]["result"] for i in good] == [i + 1 for i in range(5)]
    assert not mark.exists(), "a row made a stage import tests.sentinel_module"
    assert not node.events("consumer.crashed") and not node.events("producer.crashed")
    assert node.proc.poll() is None
    assert_no_job_leftovers(node)


def test_arguments_that_do_not_fit_the_signature_end_in_error_before_a_child_runs(
        conn, start_node):
    ids = [insert_rows(conn, name, [args])[0] for name, args, _ in BAD_ARGUMENTS]
    node = start_node()
    wait_terminal(conn, ids, timeout=60, node=node)
    found = check_rows(conn, ids)
    for tid, (name, args, fragment) in zip(ids, BAD_ARGUMENTS):
        r = found[tid]
        assert (r["status"], r["attempts"], r["lost"]) == ("error", 1, 0), (name, args, r)
        assert f"bad arguments for {name}" in r["last_error"] and fragment in r["last_error"], r
        assert r["errors"][0]["runtime_ms"] == 0.0  # refused before any child ran it
    assert node.proc.poll() is None


@pytest.mark.parametrize("args", ['"[1, 2]"', '"hello"', "1", "null", "true", "1.5"])
def test_args_that_are_not_an_array_or_object_are_refused_by_the_table(conn, args):
    with pytest.raises(psycopg.errors.CheckViolation, match="tasks_args_is_array_or_object"):
        conn.execute("INSERT INTO stagerunner.tasks (name, args) VALUES ('tests.tasks:ok', %s::jsonb)",
                     [args])


def test_a_blank_or_overlong_name_is_refused_by_the_table(conn):
    for name in ("", "x" * 256):
        with pytest.raises(psycopg.errors.CheckViolation, match="tasks_name_not_blank"):
            conn.execute("INSERT INTO stagerunner.tasks (name) VALUES (%s)", [name])


def test_deeply_nested_arguments_end_in_error_without_crashing_a_consumer(conn, start_node):
    deep = "[" * 5000 + "]" * 5000  # PostgreSQL stores it; Python's json recursion limit is ~1000
    [bad] = [conn.execute("INSERT INTO stagerunner.tasks (name, args) VALUES "
                          "('tests.tasks:echo', %s::jsonb) RETURNING id", [deep]).fetchone()[0]]
    good = insert_rows(conn, "tests.tasks:add", [[i, 1] for i in range(5)])
    node = start_node()
    wait_terminal(conn, [bad, *good], timeout=60, node=node)
    r = rows(conn, [bad])[bad]
    assert not node.events("consumer.crashed"), "a row crashed a consumer"
    assert (r["status"], r["attempts"], r["lost"]) == ("error", 1, 0), r
    assert "arguments" in r["last_error"], r["last_error"]
    assert node.proc.poll() is None


def test_rows_that_crash_consumers_cannot_stop_the_node(conn, start_node):
    deep = "[" * 5000 + "]" * 5000
    bad = [conn.execute("INSERT INTO stagerunner.tasks (name, args) VALUES "
                        "('tests.tasks:echo', %s::jsonb) RETURNING id", [deep]).fetchone()[0]
           for _ in range(5)]
    node = start_node(consumers=2)
    wait_terminal(conn, bad, timeout=60, node=node)  # raises NodeExited if the node stops
    assert not node.events("node.restart_limit")
    assert node.proc.poll() is None


def test_a_nan_timeout_cannot_defeat_the_hard_deadline(conn, start_node):
    with pytest.raises(psycopg.errors.CheckViolation):
        conn.execute("INSERT INTO stagerunner.tasks (name, timeout_s) VALUES ('x', 'NaN')")
    # and should a NaN get in anyway (the constraint dropped), the consumer still holds the line
    conn.execute("ALTER TABLE stagerunner.tasks DROP CONSTRAINT tasks_timeout_positive")
    [tid] = [conn.execute("INSERT INTO stagerunner.tasks (name, timeout_s, max_attempts) VALUES "
                          "('tests.tasks:sleep_forever', 'NaN', 1) RETURNING id").fetchone()[0]]
    node = start_node(max_job_timeout=2)
    wait_terminal(conn, [tid], timeout=20, node=node)
    r = rows(conn, [tid])[tid]
    assert not node.events("consumer.silent"), "the consumer stopped enforcing the deadline"
    assert (r["status"], r["lost"]) == ("timeout", 0), r
    assert r["errors"][-1]["runtime_ms"] < 2500, r["errors"]
