"""Stage deaths: SIGKILL a consumer (busy or idle), the producer at fault points, the
supervisor itself; freeze a consumer with SIGSTOP."""

from __future__ import annotations

import contextlib
import os
import signal
import time

import pytest

from stagerunner import config
from stagerunner_tools.invariants import check_rows, insert_rows, rows, wait_terminal
from stagerunner_tools.nodes import consumer_of, owners, spares
from stagerunner_tools.procfs import (alive_since, children, cmdline, kill_if_ours, pidfile_pids,
                                      ppid_of, seen_now)
from tests.helpers import assert_no_job_leftovers, eventually

# Tasks a consumer holds at once with the settings the tests use (the running one plus
# any prefetched), asked of the runner itself.
WINDOW = config.load(environ={}).window()

pytestmark = [pytest.mark.system, pytest.mark.timeout(150)]


def fresh_run(recorder, younger_than: float = 0.4):
    """A run that started very recently and is still going (so it is mid-job when we strike)."""
    def find():
        now = time.time()
        return [r for r in recorder.running_now() if now - r.start < younger_than]

    return eventually(find, timeout=20, interval=0.02)[0]


def id_of(recorder, key: str) -> int:
    return next(i for i, k in recorder.keys.items() if k == key)


def _kill_mid_job(conn, start_node, recorder, victim_of):
    """Start a node, SIGKILL `victim_of(job pid)` while a fresh run is going, let every task
    finish; check that all succeeded and that the run was lost once and ran again.
    (node, consumer of the run, rows, the victim's row, the run)."""
    node = start_node(consumers=2)
    ids = recorder.enqueue(conn, 10, 1.0, timeout_s=5)
    run = fresh_run(recorder)
    consumer = consumer_of(run.pid)
    assert consumer in node.stages()[1], "the job's parent is not a consumer's fork helper"
    os.kill(victim_of(run.pid), signal.SIGKILL)

    wait_terminal(conn, ids, timeout=60, node=node)
    found = check_rows(conn, ids)
    assert {r["status"] for r in found.values()} == {"success"}
    victim = found[id_of(recorder, run.key)]
    assert (victim["attempts"], victim["lost"]) == (2, 1), victim
    runs = recorder.check(conn, ids)
    assert len(runs[run.key]) == 2 and not runs[run.key][0].ended
    return node, consumer, found, victim, run


def test_sigkill_of_a_consumer_mid_job_loses_one_run_and_nothing_else(conn, start_node, recorder):
    node, _, found, victim, run = _kill_mid_job(conn, start_node, recorder, consumer_of)
    assert victim["errors"][0]["status"] == "lost" and "consumer died" in victim["errors"][0]["error"]
    assert all((r["attempts"], r["lost"]) == (1, 0) for i, r in found.items() if r is not victim)
    assert not alive_since(run.pid, run.start)
    assert node.events("consumer.died") and node.events("stage.restarted")
    assert_no_job_leftovers(node, recorder.pids())
    assert node.proc.poll() is None


def test_sigkill_of_a_consumers_fork_helper_mid_job_is_a_consumer_death(conn, start_node,
                                                                         recorder):
    """The fork helper's job children die with it; the consumer notices, exits and is
    restarted, and the run counts as lost, as when the consumer itself dies."""
    def forker_of(job):
        forker = ppid_of(job)
        assert "forker" in cmdline(forker)
        return forker

    node, consumer, _, _, _ = _kill_mid_job(conn, start_node, recorder, forker_of)
    assert node.events("consumer.forker_lost") and node.events("stage.restarted")
    assert consumer not in node.wait_stages(2)[1]
    assert_no_job_leftovers(node, recorder.pids())


def test_sigkill_of_an_idle_consumer_holding_credits(conn, start_node, recorder):
    node = start_node(consumers=2)
    _, consumers = node.wait_stages(2)
    eventually(lambda: all(spares(c) for c in consumers), timeout=10)  # spare forked: demand sent
    victim = consumers[0]
    spare = seen_now(spares(victim) + children(victim))
    os.kill(victim, signal.SIGKILL)
    ids = recorder.enqueue(conn, 12, 0.1)  # at once: the producer may still count its credit

    wait_terminal(conn, ids, timeout=60, node=node)
    found = check_rows(conn, ids)
    assert {r["status"] for r in found.values()} == {"success"}
    # a task sent to the dead pipe before the producer noticed may count as lost, never more
    assert sum(r["lost"] for r in found.values()) <= 1
    recorder.check(conn, ids)
    _, now = node.wait_stages(2)
    assert victim not in now
    assert not any(alive_since(p, t) for p, t in spare.items()), "its spare child lives on"
    assert node.events("consumer.died") and node.events("stage.restarted")
    assert_no_job_leftovers(node, recorder.pids())


@pytest.mark.parametrize("point", ["after_claim", "after_dispatch"])
def test_producer_killed_at_a_fault_point_hands_its_claims_back(conn, start_node, recorder,
                                                                 tmp_path, point):
    marker = tmp_path / "fault-fired"
    node = start_node(consumers=2, fault=f"producer:{point}@{marker}")
    ids = recorder.enqueue(conn, 10, 0.3, timeout_s=5)

    wait_terminal(conn, ids, timeout=60, node=node)
    assert marker.exists(), "the fault point was never reached"
    found = check_rows(conn, ids)
    assert {r["status"] for r in found.values()} == {"success"}
    lost = {i for i, r in found.items() if r["lost"]}
    assert 1 <= len(lost) <= 2 * WINDOW, found  # what the first claim took (its credits)
    for i in lost:
        assert (found[i]["attempts"], found[i]["lost"]) == (2, 1)
        assert "let its lease run out" in found[i]["errors"][0]["error"]
    runs = recorder.check(conn, ids)
    if point == "after_claim":  # never dispatched: no run of them started before the kill
        assert all(len(runs[recorder.keys[i]]) == 1 for i in lost)
    assert len(owners(node)) >= 2
    assert [line for line in node.events("stage.restarted") if "stage=producer" in line]
    assert node.events("task.rescued")
    assert_no_job_leftovers(node, recorder.pids())
    assert node.proc.poll() is None


def test_sigkill_of_the_supervisor_takes_its_stages_down_and_a_new_node_finishes(
        conn, start_node, recorder):
    node = start_node(consumers=2)
    producer, consumers = node.wait_stages(2)
    ids = recorder.enqueue(conn, 8, 1.0, timeout_s=5)
    eventually(lambda: len(recorder.running_now()) == 2, timeout=20, interval=0.02)
    tree = seen_now(node.tree())
    jobs = {r.pid: r.start for r in recorder.running_now()}
    os.kill(node.proc.pid, signal.SIGKILL)
    node.proc.wait(timeout=10)
    killed_at = time.monotonic()

    eventually(lambda: not any(alive_since(p, t) for p, t in tree.items()), timeout=10,
               interval=0.05)
    assert time.monotonic() - killed_at < 5, "stages outlived their supervisor"
    assert not any(alive_since(p, t) for p, t in jobs.items())
    stuck = [i for i, r in rows(conn, ids).items() if r["status"] == "running"]
    assert stuck, "expected the dead node's tasks to be left running"

    survivor = start_node(consumers=2)
    wait_terminal(conn, ids, timeout=60, node=survivor)
    found = check_rows(conn, ids)
    assert {r["status"] for r in found.values()} == {"success"}
    for i in stuck:
        assert (found[i]["attempts"], found[i]["lost"]) == (2, 1), found[i]
    recorder.check(conn, ids)
    assert survivor.events("task.rescued")
    assert_no_job_leftovers(survivor, recorder.pids())


def test_a_frozen_consumer_is_killed_by_the_kernel_at_its_jobs_deadline_backstop(
        conn, start_node, recorder):
    """SIGSTOP a consumer while its job runs: nothing of its loop runs any more, yet its kill
    timer fires at the job's deadline plus the backstop (1 s), the job dies with it, and the
    node carries on. No frozen or starved consumer can stretch a deadline."""
    node = start_node(consumers=2, max_job_timeout=2, job_timeout=2)
    ids = recorder.enqueue(conn, 8, 0.5)
    [slow] = recorder.enqueue(conn, 1, 30.0, prefix="slow", max_attempts=1)
    eventually(lambda: any(r.key.startswith("slow") for r in recorder.running_now()), timeout=20)
    run = next(r for r in recorder.running_now() if r.key.startswith("slow"))
    consumer = consumer_of(run.pid)
    assert consumer in node.stages()[1]
    seen = time.time()
    os.kill(consumer, signal.SIGSTOP)
    try:
        eventually(lambda: not alive_since(run.pid, run.start), timeout=10, interval=0.02)
        died_after = time.time() - run.start
        eventually(lambda: not alive_since(consumer, seen), timeout=5, interval=0.02)
    finally:
        if alive_since(consumer, seen):
            os.kill(consumer, signal.SIGCONT)
    # deadline 2 s + backstop 1 s, whatever the consumer's loop was doing
    assert 2.0 <= died_after < 3.6, f"the job lived {died_after:.2f}s"
    wait_terminal(conn, [*ids, slow], timeout=60, node=node)
    found = check_rows(conn, [*ids, slow])
    assert {found[i]["status"] for i in ids} == {"success"}
    # it ran in a consumer that died (a lost run, the task suspected), then ran again and
    # met its deadline
    assert (found[slow]["status"], found[slow]["lost"], found[slow]["kills"]) == ("timeout", 1, 1)
    recorder.check(conn, ids)
    assert node.events("consumer.died") and node.events("stage.restarted")
    _, now = node.wait_stages(2)
    assert consumer not in now
    assert_no_job_leftovers(node, recorder.pids())
    assert node.proc.poll() is None


def test_a_job_that_finishes_as_its_node_thaws_after_its_deadline_is_a_timeout(
        conn, start_node, recorder):
    """The node is frozen (SIGSTOP) across a job's deadline, before its kernel backstop. The
    thaw reaches the job first: by its own clock its second is over, so it writes its result
    at once, and the consumer, thawed a moment later, finds that result before any kill.
    The job finished past its deadline: a timeout, never a success (chaos seed 994755
    caught the success once)."""
    node = start_node(consumers=1)
    # deadline 0.8 s, run 1 s; the consumer's kill timer fires at 0.8 + 1 s
    [late] = recorder.enqueue(conn, 1, 1.0, prefix="late", max_attempts=1, timeout_s=0.8)
    run = fresh_run(recorder, younger_than=0.3)
    consumer = consumer_of(run.pid)
    frozen = [consumer, run.pid]  # the consumer first: it must not kill the job meanwhile
    for pid in frozen:
        os.kill(pid, signal.SIGSTOP)
    seen = time.time()
    try:
        assert seen < run.start + 0.7, "frozen too late: the deadline may have passed"
        assert consumer in node.stages()[1]
        time.sleep(max(0.0, run.start + 1.05 - time.time()))  # its run's 1 s is over
        os.kill(run.pid, signal.SIGCONT)
        # the job writes its result and exits; its consumer is still frozen
        eventually(lambda: not alive_since(run.pid, seen), timeout=0.4, interval=0.01)
        assert time.time() < run.start + 1.6, "too close to the consumer's kill timer"
    finally:
        for pid in frozen:
            with contextlib.suppress(ProcessLookupError):  # the job may be gone and reaped
                os.kill(pid, signal.SIGCONT)
    wait_terminal(conn, [late], timeout=30, node=node)
    done = rows(conn, [late])[late]
    assert done["status"] == "timeout", done
    assert "past its deadline of 0.8 s" in done["last_error"], done["last_error"]
    assert done["errors"][-1]["runtime_ms"] >= 1000, done["errors"]
    # its consumer lives on and serves the next task
    again = recorder.enqueue(conn, 2, 0.05)
    wait_terminal(conn, again, timeout=30, node=node)
    assert {r["status"] for r in check_rows(conn, again).values()} == {"success"}
    assert consumer in node.stages()[1] and node.proc.poll() is None


@pytest.mark.parametrize("victim, kind", [
    ("consumer", "grandchildren"),
    pytest.param("consumer", "escaped"),
    ("supervisor", "grandchildren"),
    ("supervisor", "escaped")])
def test_grandchildren_of_a_job_die_with_its_consumer_or_supervisor(conn, start_node, tmp_path,
                                                                   victim, kind):
    """A job's grandchildren, in its group or escaped with setsid(), die when its consumer is
    SIGKILLed (the supervisor cleans up) or when the supervisor itself is SIGKILLed."""
    node = start_node(consumers=1)
    pidfile = tmp_path / "pids"
    ids = insert_rows(conn, "tests.tasks:misbehave", [[kind, str(pidfile)]], timeout_s=30,
                       max_attempts=1)
    wanted = 3 if kind == "grandchildren" else 2
    eventually(lambda: pidfile.exists() and len(pidfile.read_text().split()) >= wanted, timeout=20)
    pids = pidfile_pids(pidfile)
    job = next(iter(pids))
    grandchildren = {p: t for p, t in pids.items() if p != job}
    consumer = consumer_of(job)
    assert consumer in node.stages()[1]
    os.kill(consumer if victim == "consumer" else node.proc.pid, signal.SIGKILL)

    try:
        eventually(lambda: not alive_since(job, pids[job]), timeout=10)
        eventually(lambda: not any(alive_since(g, t) for g, t in grandchildren.items()), timeout=10)
    finally:
        for g, t in grandchildren.items():  # never leave them behind, whatever the outcome
            kill_if_ours(g, t, marker="time.sleep(3600)")
    if victim == "consumer":
        eventually(lambda: rows(conn, ids)[ids[0]]["lost"] >= 1, timeout=20)
        assert node.events("consumer.died")
