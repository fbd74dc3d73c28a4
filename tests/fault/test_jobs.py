"""Jobs that misbehave, each on a running node: it ends in the documented status with a
useful reason, the node keeps serving other tasks, and no process of that job lives on."""

from __future__ import annotations

import pytest

from stagerunner_tools.invariants import check_rows, insert_rows, rows, wait_terminal
from stagerunner_tools.procfs import alive_since, pidfile_pids
from tests.helpers import assert_no_job_leftovers, eventually

pytestmark = [pytest.mark.system, pytest.mark.timeout(120)]

DEADLINE = "killed at its deadline of 1 s"

# kind, amount, row columns, expected status, fragment of last_error (None: no error)
CASES = {
    "grandchildren": (0, {}, "timeout", DEADLINE),
    "escaped": (0, {}, "timeout", DEADLINE),
    "ignore_sigterm": (0, {}, "timeout", DEADLINE),
    "blocked_in_c": (0, {}, "timeout", DEADLINE),
    "segfault": (0, {}, "error", "killed by signal SIGSEGV before sending a result"),
    "exit_zero": (0, {}, "error", "exited with code 0 without sending a result"),
    "memory": (1024, {}, "error", "MemoryError"),
    "flood": (20000, {"timeout_s": 20}, "success", None),
    "huge": (2_000_000, {}, "error", "result too large: 2000002 bytes of JSON, limit 1048576"),
    "unencodable": (0, {}, "error", "result is not JSON-encodable"),
    "kill_consumer": (0, {}, "error", "quarantined: its consumer died while it ran 3 times"),
}


@pytest.mark.parametrize("kind", list(CASES))
def test_a_misbehaving_job_ends_as_documented_and_leaves_nothing_behind(
        conn, start_node, recorder, tmp_path, kind):
    amount, cols, status, reason = CASES[kind]
    node = start_node(consumers=2, job_memory_mb=256)
    pidfile = tmp_path / "pids"
    [bad] = insert_rows(conn, "tests.tasks:misbehave", [[kind, str(pidfile), amount]],
                         max_attempts=1, **cols)
    good = recorder.enqueue(conn, 8, 0.1)

    wait_terminal(conn, [bad, *good], timeout=60, node=node)
    found = check_rows(conn, [bad, *good])
    row = found[bad]
    assert row["status"] == status, (row["status"], row["last_error"])
    if reason is None:
        assert row["last_error"] is None and row["result"] == amount
    else:
        assert reason in row["last_error"], row["last_error"]
    if status == "timeout":
        assert row["errors"][-1]["runtime_ms"] < 1500, row["errors"]
    if kind == "kill_consumer":
        assert (row["attempts"], row["lost"], row["kills"]) == (3, 3, 3)
        assert len(node.events("consumer.died")) == 3
    else:
        assert (row["attempts"], row["lost"]) == (1, 0)
    # the node kept serving everything else
    assert all(found[i]["status"] == "success" for i in good)
    recorder.check(conn, good)
    assert node.proc.poll() is None
    # nothing of the job lives on: the job itself, its grandchildren (escaped or not)
    pids = pidfile_pids(pidfile)
    assert pids
    eventually(lambda: not any(alive_since(p, t) for p, t in pids.items()), timeout=10)
    assert_no_job_leftovers(node, {**pids, **recorder.pids()})


def test_a_hard_deadline_is_not_stretched_by_a_busy_node(conn, start_node, tmp_path):
    """Every one of several simultaneous stuck jobs dies at its deadline, none much later."""
    node = start_node(consumers=2)
    ids = insert_rows(conn, "tests.tasks:misbehave",
                       [["ignore_sigterm", str(tmp_path / f"p{i}")] for i in range(6)], max_attempts=1)
    wait_terminal(conn, ids, timeout=60, node=node)
    for r in rows(conn, ids).values():
        assert r["status"] == "timeout" and r["errors"][-1]["runtime_ms"] < 1500, r["errors"]


def test_big_messages_crossing_between_producer_and_consumer_never_deadlock(conn, start_node):
    """A batch of tasks with megabytes of arguments one way while a megabytes-long result
    comes back the other: neither stage ever blocks writing to the other."""
    node = start_node(consumers=1, prefetch=3, result_max_bytes=8 << 20, job_timeout=10,
                      max_job_timeout=10)
    big = "z" * ((1 << 20) - 100)  # arguments are at most 1 MiB: a batch of 3 is 3 MiB
    ids = insert_rows(conn, "tests.tasks:echo", [[big]] * 3)
    ids += insert_rows(conn, "tests.tasks:echo_big", [[3 << 20]] * 4)
    wait_terminal(conn, ids, timeout=60, node=node)
    found = check_rows(conn, ids)
    assert {r["status"] for r in found.values()} == {"success"}, {
        i: (r["status"], r["last_error"]) for i, r in found.items()}
    assert not node.events("consumer.silent") and not node.events("stage.restarted")
