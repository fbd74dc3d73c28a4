"""Load: a big backlog waiting at start-up. The producer claims no more than its consumers'
credits, its memory stays flat, and everything finishes."""

from __future__ import annotations

import os
import time

import pytest

from stagerunner_tools.invariants import check_alive
from stagerunner_tools.procfs import rss_kib
from tests.helpers import eventually

CONSUMERS = 2
# Child reuse, so that 100,000 tasks drain in well under a minute: what this test checks
# (claims bounded by credits, flat producer memory, nothing lost) is the producer's job,
# and a fresh child per job would make it a 4-minute fork benchmark (~370 tasks/s here).
REUSE = {"child_reuse": 100}
WINDOW_REUSE = 1 + 32  # one running + the default prefetch with child reuse (config.py)
TASKS = int(os.environ.get("STAGERUNNER_TEST_LOAD_TASKS", "100000"))


@pytest.mark.slow
@pytest.mark.system
@pytest.mark.timeout(900)
def test_a_big_backlog_is_claimed_only_by_credit_with_flat_producer_memory(conn, start_node):
    conn.execute("INSERT INTO stagerunner.tasks (name, args) "
                 "SELECT 'tests.tasks:ok', '[]'::jsonb FROM generate_series(1, %s)", [TASKS])
    conn.execute("ANALYZE stagerunner.tasks")
    started = time.monotonic()
    node = start_node(consumers=CONSUMERS, **REUSE)
    producer, _ = node.wait_stages(CONSUMERS)
    eventually(lambda: conn.execute("SELECT count(*) FROM stagerunner.tasks "
                                    "WHERE status = 'success'").fetchone()[0] > 0, timeout=30)

    running, rss, left = [], [], TASKS
    while left:
        check_alive(node)
        assert time.monotonic() - started < 840, f"{left} of {TASKS} still unfinished"
        counts = dict(conn.execute("SELECT status::text, count(*) FROM stagerunner.tasks "
                                   "GROUP BY 1").fetchall())
        running.append(counts.get("running", 0))
        left = counts.get("waiting", 0) + counts.get("running", 0)
        kib = rss_kib(producer)
        assert kib is not None, "the producer died"
        rss.append(kib)
        time.sleep(0.1)
    elapsed = time.monotonic() - started

    done = dict(conn.execute("SELECT status::text, count(*) FROM stagerunner.tasks GROUP BY 1").fetchall())
    assert done == {"success": TASKS}, done
    # Never more claimed than credits. Exactly, per claim: the rows of one claim share its
    # transaction's now() in claimed_at.
    biggest = conn.execute("SELECT count(*) FROM stagerunner.tasks GROUP BY claimed_at "
                           "ORDER BY 1 DESC LIMIT 1").fetchone()[0]
    assert biggest <= CONSUMERS * WINDOW_REUSE, f"one claim took {biggest} tasks"
    # And sampled: a row stays `running` while its consumer holds it (<= consumers x window)
    # and, once finished, until the producer writes its outcome. The producer dispatches a
    # claim before it writes the outcomes it holds (consumers wait on work, nobody waits on
    # outcomes), so for an instant both can be full: at most twice the window. More than
    # that would mean claims beyond credit.
    bound = 2 * CONSUMERS * WINDOW_REUSE + CONSUMERS
    over = [(i, n) for i, n in enumerate(running) if n > bound]
    assert not over, f"more rows running than credits allow (sample, running): {over[:10]}"
    spread_mib = (max(rss) - min(rss)) / 1024
    print(f"\n{TASKS} tasks in {elapsed:.1f}s ({TASKS / elapsed:.0f}/s), largest claim {biggest}, "
          f"max running {max(running)} (bound 2 x consumers x window + consumers = "
          f"{bound}), producer RSS {min(rss) / 1024:.1f}-{max(rss) / 1024:.1f} MiB "
          f"over {len(rss)} samples")
    assert spread_mib < 10, f"producer RSS grew by {spread_mib:.1f} MiB"
    assert node.stop() == 0
