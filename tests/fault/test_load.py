"""Load: a big backlog waiting at start-up. The producer claims no more than its consumers'
credits, its memory stays flat, and everything finishes."""

from __future__ import annotations

import math
import os
import time

import pytest

from stagerunner import producer as producer_module
from tests.fault.conftest import check_alive, rss_kib, wait_stages
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
    producer, _ = wait_stages(node, CONSUMERS)
    eventually(lambda: conn.execute("SELECT count(*) FROM stagerunner.tasks "
                                    "WHERE status = 'success'").fetchone()[0] > 0, timeout=30)

    running, done_at, rss, left = [], [], [], TASKS
    while left:
        check_alive(node)
        assert time.monotonic() - started < 840, f"{left} of {TASKS} still unfinished"
        counts = dict(conn.execute("SELECT status::text, count(*) FROM stagerunner.tasks "
                                   "GROUP BY 1").fetchall())
        running.append(counts.get("running", 0))
        done_at.append((time.monotonic(), counts.get("success", 0)))
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
    # And sampled: rows `running` <= consumers x window, plus one per consumer during the
    # hand-off, plus the outcomes the producer holds back to write them in one batch (at
    # most FLUSH_AFTER_S of them at the measured drain rate; see producer.py). Without that
    # batching the bound is the consumers x window + consumers.
    flush_after = getattr(producer_module, "FLUSH_AFTER_S", 0.0)
    rates = [0.0] + [(b[1] - a[1]) / max(b[0] - a[0], 1e-3) for a, b in zip(done_at, done_at[1:])]
    over = []
    for i, n in enumerate(running):
        rate = max(rates[max(i - 1, 0):i + 2])
        allowance = math.ceil(rate * flush_after) + (1 if flush_after else 0)
        if n > CONSUMERS * WINDOW_REUSE + CONSUMERS + allowance:
            over.append((i, n, allowance))
    assert not over, f"more rows running than credits allow (sample, running, allowance): {over[:10]}"
    spread_mib = (max(rss) - min(rss)) / 1024
    print(f"\n{TASKS} tasks in {elapsed:.1f}s ({TASKS / elapsed:.0f}/s), largest claim {biggest}, "
          f"max running {max(running)} (consumers x window + consumers = "
          f"{CONSUMERS * WINDOW_REUSE + CONSUMERS}), producer RSS {min(rss) / 1024:.1f}-{max(rss) / 1024:.1f} MiB "
          f"over {len(rss)} samples")
    assert spread_mib < 10, f"producer RSS grew by {spread_mib:.1f} MiB"
    assert node.stop() == 0
