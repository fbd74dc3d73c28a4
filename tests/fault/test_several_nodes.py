"""The fault classes that need a peer to show: two nodes on one database while one of
them has its database stop answering, dies holding outcomes it has not written, meets a
task that keeps killing its consumer, is SIGKILLed and restarted 2 s later, or runs
with its clock minutes off.

Each test checks the same promises at the end (``all_well``): every task finished as
expected, no two runs of one task were ever alive at once and none ran more often than
it was claimed (the run records), no job process outlived its job, and no node exited.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
from psycopg.conninfo import conninfo_to_dict

from stagerunner import config
from stagerunner.completer import FLUSH_BATCH
from stagerunner_tools.blackhole import blackhole
from stagerunner_tools.invariants import (FINISHED, check_alive, check_rows, count_in,
                                          insert_rows)
from stagerunner_tools.nodes import ROOT
from stagerunner_tools.procfs import alive_since, pidfile_pids, seen_now
from tests.helpers import assert_no_job_leftovers, eventually

pytestmark = [pytest.mark.system, pytest.mark.timeout(240)]

# A short lease, so that a rescue comes within seconds.
LEASE = dict(node_expiry=2, heartbeat_interval=0.5)
WINDOW = config.load(environ={}).window()  # tasks a consumer holds at once by default


def running_by(conn, ids: Sequence[int], prefix: str) -> dict[int, int]:
    """{task id: attempt} of tasks running under owners starting with `prefix`."""
    return dict(conn.execute(
        "SELECT id, attempts FROM stagerunner.tasks WHERE id = ANY(%s) AND status = 'running' "
        "AND claimed_by LIKE %s", [list(ids), prefix + "%"]).fetchall())


def wait_all(conn, ids: Sequence[int], nodes: Sequence[Any], timeout: float = 90) -> None:
    """Until every task is finished; NodeExited at once if any node exits."""
    deadline = time.monotonic() + timeout
    while count_in(conn, ids, FINISHED) != len(ids):
        for node in nodes:
            check_alive(node)
        assert time.monotonic() < deadline, (
            f"{len(ids) - count_in(conn, ids, FINISHED)} of {len(ids)} tasks not finished "
            f"within {timeout:g} s")
        time.sleep(0.1)


def all_well(conn, ids: Sequence[int], recorder, nodes: Sequence[Any],
             status: str = "success") -> tuple[dict[int, dict[str, Any]], dict[str, Any]]:
    """The promises every test ends on; (rows, runs)."""
    found = check_rows(conn, ids)
    assert {r["status"] for r in found.values()} == {status}, {
        i: (r["status"], r["last_error"]) for i, r in found.items() if r["status"] != status}
    runs = recorder.check(conn, list(ids))  # no overlap, no run without a claim
    for node in nodes:
        assert node.proc.poll() is None, f"a node exited: {node.log_tail()}"
        assert not node.events("node.restart_limit")
        assert_no_job_leftovers(node, recorder.pids())
    return found, runs


def logged_ids(node, event: str) -> set[int]:
    return {int(m) for line in node.events(event) for m in re.findall(r"\btask_id=(\d+)", line)}


# 1. The database stops answering one node ------------------------------------------------

def test_a_database_that_stops_answering_one_node_while_its_peer_rescues(
        db, conn, start_node, recorder):
    """Alpha reaches the database through a black hole (``blackhole``: packets dropped,
    no error, no reset, no FIN); beta directly. Swallow alpha's traffic past its lease
    while it runs tasks: beta rescues them, and alpha's runs of them were killed (the
    kernel timer, or the watchdog's kill of the stuck producer) before beta's began.
    After the restore alpha reconnects under a new owner and works again."""
    port = int(conninfo_to_dict(db).get("port") or 5432)
    with blackhole(port) as hole:
        alpha = start_node(dsn=hole.through(db), node_name="alpha", consumers=2, prefetch=0,
                           **LEASE)
        beta = start_node(node_name="beta", consumers=2, prefetch=0, **LEASE)
        ids = recorder.enqueue(conn, 12, 1.5, timeout_s=10)
        eventually(lambda: len(running_by(conn, ids, "alpha/")) == 2, timeout=30, interval=0.02)
        hole.swallow()
        cut = time.time()
        held = running_by(conn, ids, "alpha/")
        try:
            # past alpha's lease beta hands its tasks back and runs them; keep the hole
            # shut until those second runs are going, so a live stale run would overlap
            eventually(lambda: set(held) <= logged_ids(beta, "task.rescued"), timeout=30)
            eventually(lambda: all(len(recorder.runs().get(recorder.keys[t], [])) >= 2
                                   for t in held), timeout=30)
            time.sleep(0.5)
        finally:
            hole.restore()

        wait_all(conn, ids, [alpha, beta])
        found, runs = all_well(conn, ids, recorder, [alpha, beta])
        for t in held:
            stale = runs[recorder.keys[t]][0]
            assert stale.last < cut + LEASE["node_expiry"] + 0.1, "a stale run outlived the lease"
            assert found[t]["lost"] >= 1 and found[t]["kills"] == 0, found[t]
        assert alpha.events("producer.unresponsive") or alpha.events("producer.fenced")
        # alpha recovered: alone, it runs new work
        eventually(lambda: len(alpha.events("db.connected")) >= 2, timeout=30)
        assert beta.stop() == 0
        after = recorder.enqueue(conn, 4, 0.1, timeout_s=10)
        wait_all(conn, after, [alpha], timeout=60)
        all_well(conn, after, recorder, [alpha])
        assert alpha.stop() == 0  # before the hole closes under it


# 2. A producer dies holding outcomes it has not written -------------------------------

def test_a_producer_dying_with_unwritten_outcomes_reruns_only_a_bounded_few(
        conn, start_node, recorder, tmp_path):
    """Alpha's producer SIGKILLs itself once while it holds outcomes not yet written
    (fault point ``before_flush``). Those tasks, and the jobs its consumers were running,
    run again, as lost runs that spend no attempt; never more than the README's bound:
    64 outcomes plus one window per consumer, plus one running job per consumer."""
    consumers = 2
    marker = tmp_path / "fault-fired"
    alpha = start_node(node_name="alpha", consumers=consumers,
                       fault=f"producer:before_flush@{marker}")
    beta = start_node(node_name="beta", consumers=consumers)
    ids = recorder.enqueue(conn, 120, 0.02, timeout_s=5)

    wait_all(conn, ids, [alpha, beta], timeout=120)
    assert marker.exists(), "the fault point was never reached"
    found, runs = all_well(conn, ids, recorder, [alpha, beta])
    rerun = [i for i in ids if len(runs[recorder.keys[i]]) > 1]
    bound = FLUSH_BATCH + consumers * WINDOW + consumers
    assert bound < len(ids)  # the bound says something here
    assert 1 <= len(rerun) <= bound, rerun
    for i in rerun:
        r = found[i]
        assert r["lost"] >= 1 and r["attempts"] - r["lost"] == 1 and r["kills"] == 0, r
    assert [line for line in alpha.events("stage.restarted") if "stage=producer" in line]
    print(f"\n{len(rerun)} of {len(ids)} tasks ran again (bound {bound})")


# 3. A task that keeps killing its consumer ------------------------------------------

def test_a_task_killing_its_consumer_is_quarantined_and_stops_no_node(
        conn, start_node, recorder, tmp_path):
    """It kills whichever consumer runs it, on either node. After 3 kills in all it is
    quarantined; those deaths never count toward a node's restart limit (1 here: a node
    that counted two deaths would stop, and one of the two saw at least two)."""
    nodes = [start_node(node_name=name, consumers=2, max_restarts=1, restart_window=300)
             for name in ("alpha", "beta")]
    pidfile = tmp_path / "pids"
    [bad] = insert_rows(conn, "tests.tasks:misbehave", [["kill_consumer", str(pidfile)]],
                        max_attempts=1)
    good = recorder.enqueue(conn, 12, 0.2)

    wait_all(conn, [bad, *good], nodes, timeout=120)
    row = check_rows(conn, [bad])[bad]
    assert row["status"] == "error", row
    assert "quarantined: its consumer died while it ran 3 times" in row["last_error"]
    assert (row["attempts"], row["lost"], row["kills"]) == (3, 3, 3)
    deaths = [len(n.events("consumer.died")) for n in nodes]
    assert sum(deaths) == 3, deaths
    all_well(conn, good, recorder, nodes)
    # it stays quarantined: no fourth run anywhere, and nothing of its runs lives on
    time.sleep(2)
    assert len(pidfile.read_text().split()) == 3
    assert check_rows(conn, [bad])[bad]["status"] == "error"
    pids = pidfile_pids(pidfile)
    eventually(lambda: not any(alive_since(p, t) for p, t in pids.items()), timeout=10)


# 4. The supervisor SIGKILLed and restarted 2 s later ------------------------------------

def test_a_supervisor_killed_and_restarted_2s_later_never_runs_beside_its_orphans(
        conn, start_node, recorder):
    """As systemd's Restart=on-failure, RestartSec=2 would: SIGKILL alpha's supervisor
    mid-job and start it again with the same name and settings 2 s later, without
    waiting for its stages and jobs to go. The new incarnation (a new owner) must not
    run a task while the old one's run of it lives; the old tree dies within seconds."""
    settings = dict(node_name="alpha", consumers=2)
    alpha = start_node(**settings)
    beta = start_node(node_name="beta", consumers=2)
    ids = recorder.enqueue(conn, 16, 1.0, timeout_s=5)
    eventually(lambda: len(running_by(conn, ids, "alpha/")) == 2, timeout=30, interval=0.02)
    old_tree = seen_now(alpha.tree())
    os.kill(alpha.pid, signal.SIGKILL)
    alpha.proc.wait(timeout=10)
    time.sleep(0.3)  # a write already on the wire lands (the lease runs 3 s)
    orphaned = running_by(conn, ids, "alpha/")
    assert orphaned, "alpha held nothing when it died"
    time.sleep(1.7)  # 2 s after the kill, as systemd would; the orphans are not waited for
    again = start_node(**settings)

    eventually(lambda: not any(alive_since(p, t) for p, t in old_tree.items()), timeout=10)
    wait_all(conn, ids, [again, beta])
    found, _ = all_well(conn, ids, recorder, [again, beta])
    for t, attempt in orphaned.items():
        assert (found[t]["lost"], found[t]["attempts"]) == (1, attempt + 1), found[t]
        assert "let its lease run out" in found[t]["errors"][0]["error"]


# 5. Clocks minutes apart -------------------------------------------------------------------

SKEWCLOCK = ROOT / "src" / "stagerunner_tools" / "skewclock.c"


@pytest.fixture(scope="session")
def skewclock(tmp_path_factory) -> Path:
    """The clock shim, built. (libfaketime would not do: it rewrites timer_settime and
    clock_nanosleep too, and with FAKETIME_DONT_FAKE_MONOTONIC a CLOCK_BOOTTIME kill
    timer and a plain time.sleep fail with EINVAL; without it the kill timer never fires.
    A machine whose clock is off has a right CLOCK_BOOTTIME.)"""
    cc = shutil.which("cc") or shutil.which("gcc")
    if cc is None:  # under CI, .ci/run installs one: a skip there would hide the test
        (pytest.fail if os.environ.get("CI") else pytest.skip)(
            "no C compiler to build the clock shim (apt-get install gcc)")
    out = tmp_path_factory.mktemp("skewclock") / "skewclock.so"
    subprocess.run([cc, "-shared", "-fPIC", "-O2", "-o", str(out), str(SKEWCLOCK), "-ldl"],
                   check=True, capture_output=True)
    return out


def _cron_ticks(conn) -> list[tuple[Any, int, Any]]:
    """(tick, tasks enqueued for it, the earliest one's creation on the database clock)."""
    return conn.execute("SELECT run_at, count(*), min(created_at) FROM stagerunner.tasks "
                        "WHERE name = 'tests.every_minute' GROUP BY run_at ORDER BY run_at"
                        ).fetchall()


def _uses_shim(node, shim: Path) -> bool:
    """Every stage of the node has the shim loaded."""
    producer, consumers = node.stages()
    for pid in [node.pid, producer, *consumers]:
        with open(f"/proc/{pid}/maps") as f:
            if str(shim) not in f.read():
                return False
    return True


@pytest.mark.timeout(420)
@pytest.mark.parametrize("skew_s", [300, -300], ids=["ahead_5m", "behind_5m"])
def test_nodes_whose_clocks_are_minutes_apart(conn, start_node, recorder, skewclock, skew_s):
    """One node's wall clock is 5 minutes off. Leases, rescue, deadlines and cron ticks
    go by the database's clock or by CLOCK_BOOTTIME, so: nothing is rescued from a live
    owner, a 0.5 s deadline is 0.5 s, and each cron tick is enqueued once, on time."""
    modules = "tests.tasks,tests.periodic_tasks"
    shim = {"LD_PRELOAD": str(skewclock), "SKEWCLOCK_OFFSET_S": str(skew_s)}
    skewed = start_node(node_name="skewed", task_modules=modules, extra_env=shim, **LEASE)
    true = start_node(node_name="true", task_modules=modules, **LEASE)
    nodes = [skewed, true]
    skewed.wait_stages(2)
    assert _uses_shim(skewed, skewclock)

    ids = recorder.enqueue(conn, 40, 0.3, timeout_s=5)
    late = recorder.enqueue(conn, 6, 5.0, prefix="late", timeout_s=0.5, max_attempts=1)
    wait_all(conn, [*ids, *late], nodes, timeout=120)
    found, _ = all_well(conn, ids, recorder, nodes)
    assert {(r["attempts"], r["lost"]) for r in found.values()} == {(1, 0)}
    assert {r["claimed_by"].split("/")[0] for r in found.values()} == {"skewed", "true"}
    late_rows, late_runs = all_well(conn, late, recorder, nodes, status="timeout")
    for t in late:
        [run] = late_runs[recorder.keys[t]]
        # killed at 0.5 s from its start in the consumer (the run's own start comes a
        # little later), not minutes early or late
        assert 0.1 <= run.last - run.start < 1.2, (run, late_rows[t]["claimed_by"])
        assert 400 <= late_rows[t]["errors"][-1]["runtime_ms"] < 1500, late_rows[t]["errors"]

    # the tick every node tries at start, then two that both nodes race for
    eventually(lambda: len(_cron_ticks(conn)) >= 3, timeout=200, interval=0.5)
    ticks = _cron_ticks(conn)
    assert all(n == 1 for _, n, _ in ticks), ticks
    for (a, _, _), (b, _, created) in zip(ticks, ticks[1:]):
        assert (b - a).total_seconds() == 60, ticks
        assert 0 <= (created - b).total_seconds() < 10, ("enqueued off its tick", ticks)
    scheduled = [line for n in nodes for line in n.events("task.scheduled")]
    assert len(scheduled) == len(ticks), scheduled
    for node in nodes:
        assert not node.events("task.rescued") and not node.events("task.stale_outcome")
        assert node.proc.poll() is None
    every = conn.execute("SELECT max(lost) FROM stagerunner.tasks").fetchone()[0]
    assert every == 0, "a run was lost while both nodes were up"
