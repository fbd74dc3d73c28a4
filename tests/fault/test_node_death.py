"""Node death: two nodes on one database; SIGKILL one whole node while it runs tasks."""

from __future__ import annotations

import re
import time

import pytest

from stagerunner_tools.invariants import check_rows, rows, wait_terminal
from stagerunner_tools.nodes import owners
from stagerunner_tools.procfs import alive_since
from tests.helpers import assert_no_job_leftovers, eventually

pytestmark = [pytest.mark.system, pytest.mark.timeout(150)]


def running_by(conn, ids, prefix: str) -> dict[int, int]:
    """{task id: attempt} of tasks running under owners starting with `prefix`."""
    return dict(conn.execute(
        "SELECT id, attempts FROM stagerunner.tasks WHERE id = ANY(%s) AND status = 'running' "
        "AND claimed_by LIKE %s", [ids, prefix + "%"]).fetchall())


def test_two_healthy_nodes_share_the_work_and_run_each_task_exactly_once(conn, start_node, recorder):
    alpha = start_node(consumers=2, node_name="alpha")
    beta = start_node(consumers=2, node_name="beta")
    ids = recorder.enqueue(conn, 80, 0.05)

    wait_terminal(conn, ids, timeout=90, node=beta)
    found = check_rows(conn, ids)
    assert {r["status"] for r in found.values()} == {"success"}
    assert {(r["attempts"], r["lost"]) for r in found.values()} == {(1, 0)}
    runs = recorder.check(conn, ids)
    assert sorted(len(runs[k]) for k in recorder.keys.values()) == [1] * len(ids)
    by_node = {r["claimed_by"].split("/")[0] for r in found.values()}
    assert by_node == {"alpha", "beta"}, "both nodes should have taken work"
    for node in (alpha, beta):
        assert not node.events("task.rescued") and not node.events("task.stale_outcome")
        assert node.proc.poll() is None
    assert alpha.stop() == 0 and beta.stop() == 0


def test_a_dead_nodes_running_tasks_are_rescued_by_the_survivor_within_5s(conn, start_node, recorder):
    alpha = start_node(consumers=2, node_name="alpha")
    beta = start_node(consumers=2, node_name="beta")
    alpha.wait_stages(2)
    beta.wait_stages(2)
    ids = recorder.enqueue(conn, 24, 1.5, timeout_s=5)
    eventually(lambda: len(running_by(conn, ids, "alpha/")) == 2 and running_by(conn, ids, "beta/"),
               timeout=20, interval=0.02)
    alpha_owners = owners(alpha)
    assert alpha_owners and all(o.startswith("alpha/") for o in alpha_owners)

    seen = time.time()
    tree = alpha.kill()
    killed_at = time.monotonic()
    orphaned = running_by(conn, ids, "alpha/")
    beta_held = running_by(conn, ids, "beta/")
    assert orphaned, "alpha held nothing when it died"
    # the survivor hands the dead node's tasks back within expiry + heartbeat (4 s by default)
    while running_by(conn, ids, "alpha/"):
        assert time.monotonic() - killed_at < 8, "the dead node's tasks were never rescued"
        # a live node's tasks are never touched meanwhile
        for tid, attempt in running_by(conn, ids, "beta/").items():
            assert rows(conn, [tid])[tid]["lost"] == 0
        time.sleep(0.05)
    rescue_s = time.monotonic() - killed_at
    print(f"\nthe dead node's tasks were handed back {rescue_s:.2f}s after the kill")
    assert not any(alive_since(p, seen) for p in tree)

    wait_terminal(conn, ids, timeout=90, node=beta)
    found = check_rows(conn, ids)
    assert {r["status"] for r in found.values()} == {"success"}
    for tid in orphaned:
        r = found[tid]
        assert (r["lost"], r["attempts"]) == (1, orphaned[tid] + 1), r
        assert "let its lease run out" in r["last_error"] and "(alpha/" in r["last_error"]
    for tid in beta_held:
        assert found[tid]["lost"] == 0 and found[tid]["attempts"] == beta_held[tid], found[tid]
    for tid, r in found.items():
        assert all("beta/" not in e.get("error", "") for e in r["errors"]), r
    rescued = {int(m) for line in beta.events("task.rescued")
               for m in re.findall(r"\btask_id=(\d+)", line)}
    assert rescued == set(orphaned)
    recorder.check(conn, ids)
    assert_no_job_leftovers(beta, recorder.pids())
    assert rescue_s <= 5.0, f"rescued {rescue_s:.2f}s after the node died"
