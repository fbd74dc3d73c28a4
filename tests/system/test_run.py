"""python -m stagerunner as a subprocess against a real database."""

import json
import os
import signal
import time
from collections import Counter

import pytest

from stagerunner_tools import procfs
from stagerunner_tools.procfs import alive as pid_alive
from stagerunner_tools.procfs import cpu_ns, started_at
from tests.helpers import eventually

pytestmark = [pytest.mark.system, pytest.mark.timeout(90)]


def enqueue_many(conn, name, args_list, **cols):
    extra = "".join(f", {k}" for k in cols)
    values = "".join(f", %({k})s" for k in cols)
    ids = []
    for args in args_list:
        ids.append(conn.execute(
            f"INSERT INTO stagerunner.tasks (name, args{extra}) VALUES (%(n)s, %(a)s::jsonb{values}) "
            "RETURNING id", {"n": name, "a": json.dumps(args), **cols}).fetchone()[0])
    return ids


def wait_all(conn, ids, statuses=("success", "error", "timeout", "cancelled"), timeout=30):
    def done():
        rows = conn.execute("SELECT count(*) FROM stagerunner.tasks WHERE id = ANY(%s) "
                            "AND status::text = ANY(%s)", [ids, list(statuses)]).fetchone()
        return rows[0] == len(ids)

    eventually(done, timeout=timeout)


def test_many_tasks_all_end_in_success(conn, start_node, statuses):
    ids = enqueue_many(conn, "tests.tasks:add", [[i, 1] for i in range(200)])
    node = start_node()
    wait_all(conn, ids)
    assert statuses() == {"success": 200}
    results = dict(conn.execute("SELECT id, result FROM stagerunner.tasks").fetchall())
    assert results[ids[41]] == 42
    assert node.stop() == 0


def test_rows_say_where_and_how_long_each_run_ran_and_the_node_row_what_it_knows(conn, start_node):
    [fast] = enqueue_many(conn, "tests.tasks:add", [[1, 2]])
    [slow] = enqueue_many(conn, "tests.tasks:sleep_for", [[5]], timeout_s=0.5, max_attempts=1)
    node = start_node(consumers=2)
    wait_all(conn, [fast, slow])
    got = {r[0]: r[1:] for r in conn.execute(
        "SELECT id, consumer, deadline_s, runtime_ms FROM stagerunner.tasks").fetchall()}
    assert got[fast][0] in (0, 1) and got[fast][1] == 1.0 and 0 < got[fast][2] < 1000
    assert got[slow][0] in (0, 1) and got[slow][1] == 0.5 and 500 <= got[slow][2] < 900

    def beat_recorded():
        consumers, info = conn.execute("SELECT consumers, info FROM stagerunner.nodes "
                                       "WHERE expires_at > now()").fetchone()
        assert consumers == 2 and info["finished_success"] == 1 and info["finished_timeout"] == 1
        return True

    eventually(beat_recorded, timeout=10)
    assert node.stop() == 0


def test_a_sleeping_task_times_out_near_one_second_and_its_grandchild_is_gone(
        conn, start_node, get_task, tmp_path):
    pidfile = tmp_path / "grandchild.pid"
    [tid] = enqueue_many(conn, "tests.tasks:spawn_grandchild_then_sleep", [[str(pidfile)]],
                         max_attempts=1)
    start_node()
    wait_all(conn, [tid])
    row = get_task(tid)
    assert row["status"] == "timeout" and "deadline of 1 s" in row["last_error"]
    assert 1000 <= row["errors"][0]["runtime_ms"] < 1300
    eventually(lambda: not pid_alive(int(pidfile.read_text())))


def test_a_raising_task_ends_in_error_with_its_traceback_after_its_attempts(conn, start_node, get_task):
    [tid] = enqueue_many(conn, "tests.tasks:boom", [["kaput"]], max_attempts=2)
    start_node()
    wait_all(conn, [tid], timeout=20)
    row = get_task(tid)
    assert (row["status"], row["attempts"]) == ("error", 2)
    assert "Traceback (most recent call last)" in row["last_error"]
    assert "ValueError: kaput" in row["last_error"]
    assert [e["attempt"] for e in row["errors"]] == [1, 2]


def test_an_error_text_utf8_cannot_encode_is_stored_escaped_and_no_stage_crashes(
        conn, start_node, get_task):
    """Once, such a text failed the producer's whole write, and the producer crashed until
    the node gave up: one task stopped every node."""
    ids = enqueue_many(conn, "tests.tasks:boom_unencodable", [[]], max_attempts=1)
    ids += enqueue_many(conn, "tests.tasks:ok", [[]] * 3)
    start_node()  # the fixture fails the test if a stage crashed
    wait_all(conn, ids, timeout=20)
    row = get_task(ids[0])
    assert row["status"] == "error"
    assert "ValueError: no such file: f\\udcff (nul: \\x00)" in row["last_error"], row["last_error"]
    assert {get_task(i)["status"] for i in ids[1:]} == {"success"}


def test_disallowed_names_end_in_error_and_nothing_is_imported(conn, start_node, get_task, tmp_path):
    mark = tmp_path / "imported"
    names = ["tests.sentinel_module:run", "os:system", "builtins:eval", "tests.tasks:system",
             "tests.tasks:__init__", "tests.other_tasks:outside", "tests.tasks:_private"]
    ids = [enqueue_many(conn, name, [["id"]])[0] for name in names]
    node = start_node(extra_env={"SENTINEL_MARK": str(mark)})
    wait_all(conn, ids)
    for tid, name in zip(ids, names):
        row = get_task(tid)
        assert row["status"] == "error" and row["attempts"] == 1, (name, row["last_error"])
        assert "task name" in row["last_error"] or "unknown task" in row["last_error"]
    assert not mark.exists()
    assert node.proc.poll() is None  # no stage crashed the node


def test_kill_9_of_a_consumer_restarts_it_and_loses_nothing(conn, start_node, statuses):
    node = start_node(consumers=2)
    ids = enqueue_many(conn, "tests.tasks:sleep_for", [[0.2]] * 30)
    eventually(lambda: statuses().get("running"), timeout=10)
    consumers = node.stages()[1]
    assert consumers, "no consumer process found"
    os.kill(consumers[0], signal.SIGKILL)
    wait_all(conn, ids, timeout=40)
    assert statuses() == {"success": 30}
    assert "consumer died; restarting it" in node.log()
    lost = conn.execute("SELECT sum(lost), max(attempts) FROM stagerunner.tasks").fetchone()
    assert lost[0] <= 1 and lost[1] <= 2


def test_sigterm_exits_zero_and_leaves_no_task_running(conn, start_node, statuses):
    node = start_node(consumers=2)
    enqueue_many(conn, "tests.tasks:sleep_for", [[0.3]] * 40)
    eventually(lambda: statuses().get("success"), timeout=10)
    tree = node.tree()
    assert node.stop(signal.SIGTERM) == 0
    counts = statuses()
    assert "running" not in counts and counts.get("success", 0) + counts.get("waiting", 0) == 40
    assert conn.execute("SELECT count(*) FROM stagerunner.nodes").fetchone() == (0,)
    eventually(lambda: not any(pid_alive(p) for p in tree))
    assert "node stopped" in node.log()


def test_sigint_behaves_like_sigterm(conn, start_node, statuses):
    node = start_node()
    enqueue_many(conn, "tests.tasks:sleep_for", [[0.2]] * 5)
    eventually(lambda: statuses().get("success"), timeout=10)
    assert node.stop(signal.SIGINT) == 0
    assert "running" not in statuses()


def test_a_notify_wakes_the_producer_long_before_the_poll(conn, start_node, get_task):
    node = start_node(poll_interval=60, log_level="debug")
    # Idle first: both consumers attached and their first demand answered by a claim that
    # found nothing. A task enqueued earlier is taken by that claim, NOTIFY or not.
    eventually(lambda: len(node.events("consumer.attached")) == 2, timeout=10)
    time.sleep(1.5)
    claims = node.log().count("query=claim_tasks")
    [tid] = enqueue_many(conn, "tests.tasks:ok", [[]])
    eventually(lambda: get_task(tid)["status"] == "success", timeout=3)
    assert node.log().count("query=claim_tasks") > claims  # a claim the NOTIFY started


def test_a_scheduled_task_runs_when_due_not_before(conn, start_node, get_task):
    start_node(poll_interval=60)
    # scheduled as it is inserted: a row inserted due and pushed back after would race a
    # node whose consumers are ready to claim it at once
    tid = conn.execute("INSERT INTO stagerunner.tasks (name, args, run_at) VALUES "
                       "('tests.tasks:ok', '[]', now() + interval '1.5 seconds') "
                       "RETURNING id").fetchone()[0]
    time.sleep(1.0)
    assert get_task(tid)["status"] == "waiting"
    eventually(lambda: get_task(tid)["status"] == "success", timeout=3)


def test_killing_the_producer_restarts_the_stages_and_hands_its_tasks_back(conn, start_node, statuses):
    node = start_node(consumers=2)
    ids = enqueue_many(conn, "tests.tasks:sleep_for", [[0.3]] * 20)
    eventually(lambda: statuses().get("running"), timeout=10)
    producer, _ = node.stages()
    assert producer
    os.kill(producer, signal.SIGKILL)
    wait_all(conn, ids, timeout=40)
    assert statuses() == {"success": 20}
    assert "producer died; restarting it and its consumers" in node.log()


def test_too_many_restarts_stop_the_node_with_exit_1(conn, start_node):
    """Consumers that keep dying on their own (no job ran in them) stop the node."""
    node = start_node(consumers=1, max_restarts=2, restart_window=30)
    for _ in range(3):
        _, [consumer] = node.wait_stages(1)
        os.kill(consumer, signal.SIGKILL)
        eventually(lambda: consumer not in node.stages()[1] or node.proc.poll() is not None)
    assert node.proc.wait(timeout=30) == 1
    assert "too many restarts; stopping the node" in node.log()


def test_tasks_that_keep_killing_their_consumer_are_quarantined_and_the_node_carries_on(
        conn, start_node, get_task):
    node = start_node(consumers=1, max_restarts=2, restart_window=60)
    killers = enqueue_many(conn, "tests.tasks:kill_consumer", [[]] * 3)
    wait_all(conn, killers, timeout=90)
    for tid in killers:
        row = get_task(tid)
        assert row["status"] == "error" and "quarantined" in row["last_error"], row
        assert row["kills"] == 3 and row["attempts"] - row["lost"] == 0
    [ok] = enqueue_many(conn, "tests.tasks:ok", [[]])
    wait_all(conn, [ok], timeout=30)
    assert get_task(ok)["status"] == "success"
    assert node.proc.poll() is None and "too many restarts" not in node.log()


def _environ_names(pid):
    with open(f"/proc/{pid}/environ", "rb") as f:
        return [e.split(b"=", 1)[0] for e in f.read().split(b"\0") if e]


def _credentials_in_environ(pid):
    names = _environ_names(pid)
    assert b"PYTHONPATH" in names, names  # the node's, which its jobs keep
    return [n for n in names if n.startswith((b"STAGERUNNER_", b"PG")) or n == b"DATABASE_URL"]


def test_a_fork_server_without_credentials_forks_the_consumers_which_outlive_it(
        conn, start_node, statuses):
    """The consumers' fork server (``stageserver``), started at exec, is the supervisor's
    child and runs with the jobs' environment, not the runner's. Killed, it takes nothing
    with it: its consumers run on, watched by the supervisor now (``spawn.Adopted``); one
    that dies later is restarted from a new server."""
    node = start_node(consumers=2)
    _, consumers = node.wait_stages(2)
    [server] = {procfs.ppid_of(c) for c in consumers}
    assert procfs.ppid_of(server) == node.proc.pid
    assert "from multiprocessing.forkserver import main" in procfs.cmdline(server)
    assert _credentials_in_environ(server) == []  # (its consumers' titles overwrite theirs)
    ids = enqueue_many(conn, "tests.tasks:sleep_for", [[0.2]] * 10)
    eventually(lambda: statuses().get("running"), timeout=10)
    os.kill(server, signal.SIGKILL)
    eventually(lambda: len(node.events("consumer.adopted")) == 2, timeout=10)
    assert sorted(node.stages()[1]) == sorted(consumers)
    assert {procfs.ppid_of(c) for c in consumers} == {node.proc.pid}  # reparented to it
    wait_all(conn, ids, timeout=40)
    os.kill(consumers[0], signal.SIGKILL)

    def restarted():
        new = node.stages()[1]
        return len(new) == 2 and consumers[0] not in new and new

    new = eventually(restarted, timeout=20)
    [fresh] = set(new) - set(consumers)
    assert procfs.ppid_of(fresh) not in (server, node.proc.pid)  # a new server's
    ids += enqueue_many(conn, "tests.tasks:add", [[i, 1] for i in range(10)])
    wait_all(conn, ids, timeout=40)
    assert statuses() == {"success": 20}
    lost = conn.execute("SELECT sum(lost) FROM stagerunner.tasks").fetchone()[0]
    assert lost == 0 and len(node.events("stage.restarted")) == 1
    assert node.stop() == 0


def test_with_the_multiprocess_library_its_own_fork_server_forks_the_consumers(
        conn, start_node, statuses):
    """STAGERUNNER_PROCESS_LIBRARY=multiprocess: the stdlib's fork server, started at exec
    before the settings were read, is stopped, and multiprocess's, preloading the
    consumer's runtime, forks the consumers."""
    node = start_node(consumers=2, process_library="multiprocess")
    _, consumers = node.wait_stages(2)
    assert "['stagerunner.consumer']" in procfs.cmdline(procfs.ppid_of(consumers[0]))
    assert {procfs.cmdline(procfs.ppid_of(c)).split(";")[0].split("-c ")[-1] for c in consumers
            } == {"from multiprocess.forkserver import main"}
    assert not [p for p in procfs.children(node.proc.pid)
                if "from multiprocessing.forkserver" in procfs.cmdline(p)]
    ids = enqueue_many(conn, "tests.tasks:add", [[i, 1] for i in range(10)])
    wait_all(conn, ids)
    assert statuses() == {"success": 10}
    assert node.stop() == 0


def _fd_list(pid):
    """What the process's fds above 2 point at (socket:[inode], pipe:[inode], paths)."""
    found = []
    for fd in os.listdir(f"/proc/{pid}/fd"):
        if int(fd) > 2:
            try:
                found.append(os.readlink(f"/proc/{pid}/fd/{fd}"))
            except FileNotFoundError:
                pass
    return found


def _fd_targets(pid):
    return set(_fd_list(pid))


def _maps(pid):
    with open(f"/proc/{pid}/maps") as f:
        return f.read()


def test_the_first_producer_is_forked_but_keeps_nothing_of_the_supervisor(conn, start_node):
    """A node's first producer is forked from the supervisor (it shares its imports: the
    pydantic the supervisor loaded is mapped in it), yet it holds none of the
    supervisor's sockets (its signal wake-up, its end of the control pipe), and its
    signals are its own: a SIGHUP kills it (its default), the node restarts it by
    spawning a fresh one, and the node itself does not reload."""
    node = start_node(consumers=2)
    producer, consumers = node.wait_stages(2)
    assert "pydantic_core" in _maps(producer)
    # the consumers were launched first (forked by the fork server started at exec),
    # and the producer holds its end of each consumer's pipe as received (twice: it reads
    # through one handle and writes through another), not also the copy it inherited,
    # which would keep a pipe it drops open
    assert all(started_at(c) <= started_at(producer) for c in consumers)
    def attached() -> Counter[str]:  # the consumers' ends arrive just after the stages are up
        sockets = Counter(t for t in _fd_list(producer) if t.startswith("socket:"))
        assert sorted(sockets.values()).count(2) == len(consumers), sockets
        return sockets

    sockets = eventually(attached, timeout=5)
    assert max(sockets.values()) == 2, sockets
    shared = _fd_targets(producer) & _fd_targets(node.proc.pid)
    # only the process library's pipes: the producer's death sentinel (a pipe's two ends
    # read the same), the one that handed each consumer its arguments, the ones to its
    # resource tracker and its fork server (whose holders keep it running); no socket
    # of the supervisor's: its signal wake-up, its control end, a consumer's sentinel
    assert not [t for t in shared if not t.startswith("pipe:")], shared
    assert len(shared) <= 4 + len(consumers)
    before = cpu_ns([node.proc.pid])[node.proc.pid]
    time.sleep(1.0)
    assert cpu_ns([node.proc.pid])[node.proc.pid] - before < 0.2e9  # it sleeps: no sentinel fires
    os.kill(producer, signal.SIGHUP)

    def respawned():
        new, consumers = node.stages()
        return new not in (None, producer) and len(consumers) == 2 and new

    new = eventually(respawned, timeout=20)
    assert not node.events("node.reloading")
    assert any("stage=producer" in line for line in node.events("stage.restarted"))
    assert "pydantic_core" not in _maps(new)  # restarts spawn: a reload imports anew
    [tid] = enqueue_many(conn, "tests.tasks:add", [[1, 2]])
    wait_all(conn, [tid])
