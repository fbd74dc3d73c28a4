"""Fencing when a node stalls instead of dying: a node frozen past its lease (every one of
its processes stopped, as SIGSTOP, a cgroup freezer or `docker pause` would) has its task
rescued by another node; at the thaw none of its jobs may run user code, because the
kernel killed them at the lease's end while they were frozen. Two nodes, one database."""

from __future__ import annotations

import os
import signal
import time

import pytest

from stagerunner_tools.invariants import check_rows, rows, wait_terminal
from stagerunner_tools.nodes import owners
from tests.helpers import assert_no_job_leftovers, eventually

pytestmark = [pytest.mark.system, pytest.mark.timeout(180)]

LEASE = dict(node_expiry=2, heartbeat_interval=0.5, max_job_timeout=30, consumers=1, prefetch=0)


def _signal_all(pids: list[int], sig: int) -> None:
    for pid in pids:
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            pass


def _runner(conn, nodes, task_id):
    owner = rows(conn, [task_id])[task_id]["claimed_by"]
    return next(n for n in nodes if owner in owners(n))


@pytest.mark.parametrize("frozen_part", ["whole node", "producer only"])
def test_a_node_frozen_past_its_lease_runs_no_job_at_the_thaw(conn, start_node, recorder,
                                                              frozen_part):
    alpha = start_node(node_name="alpha", **LEASE)
    beta = start_node(node_name="beta", **LEASE)
    [task] = recorder.enqueue(conn, 1, 6.0, timeout_s=20)
    eventually(recorder.running_now, timeout=20)
    frozen = _runner(conn, [alpha, beta], task)
    survivor = beta if frozen is alpha else alpha
    producer, _ = frozen.stages()
    pids = [frozen.proc.pid, *frozen.tree()] if frozen_part == "whole node" else [producer]
    _signal_all(pids, signal.SIGSTOP)
    frozen_at = time.time()
    try:
        # the survivor rescues the task once the frozen node's lease (2 s) ran out, and
        # runs it again: wait until that second run has started
        eventually(lambda: len(recorder.runs().get(recorder.keys[task], [])) == 2, timeout=20)
        time.sleep(0.5)  # stay frozen a little longer: the thaw must change nothing
    finally:
        thawed_at = time.time()
        _signal_all(pids, signal.SIGCONT)
    wait_terminal(conn, [task], timeout=60, node=survivor)
    stale, rescued = recorder.runs()[recorder.keys[task]]
    # the stale run died during the freeze, at its lease's end, before the rescue started
    assert stale.last < thawed_at and stale.last < rescued.start, (stale, rescued, thawed_at)
    assert stale.last < frozen_at + 2.0, "the stale run outlived its node's lease"
    assert not stale.ended and rescued.ended
    found = check_rows(conn, [task])
    assert found[task]["status"] == "success" and found[task]["lost"] == 1
    assert found[task]["kills"] == 0  # a frozen node is not the task's fault
    recorder.check(conn, [task])
    # the thawed node recovers (its late outcome for the task is refused as stale) and
    # works again; nothing of it outlives the freeze
    assert frozen.proc.poll() is None, "the thawed node must recover, not exit"
    # its fenced producer's consumers exit 0 as it goes: they restart with the producer,
    # not alone beforehand (that would spend restarts on no crash; seen in bin/chaos)
    alone = [line for line in frozen.events("stage.restarted")
             if "stage=consumer" in line and "exitcode=0" in line]
    assert not alone, alone
    survivor.stop()
    after = recorder.enqueue(conn, 2, 0.1, timeout_s=20)
    wait_terminal(conn, after, timeout=60, node=frozen)
    assert {r["status"] for r in check_rows(conn, after).values()} == {"success"}
    assert_no_job_leftovers(frozen, recorder.pids())
