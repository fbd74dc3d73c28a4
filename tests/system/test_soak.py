"""bin/soak, briefly: a private server with autovacuum on, a node at a steady rate with
retention on, samples of the table, latencies and every stage's memory, and a report of
start and end figures (the README quotes a 30-minute run)."""

from __future__ import annotations

import json
import subprocess

import pytest

from stagerunner_tools.nodes import ROOT
from stagerunner_tools.soak import steady_index

pytestmark = [pytest.mark.system, pytest.mark.slow]


def test_the_steady_start_is_the_first_sample_after_retention_and_two_naptimes():
    samples = [{"t_s": t} for t in (30, 60, 120, 180, 210, 240)]
    assert steady_index(samples, retention_s=60) == 3  # 60 + 2 x 60 s
    assert steady_index(samples[:2], retention_s=60) == 0  # a short run: its first sample


@pytest.mark.timeout(120)
def test_a_short_soak_reports_every_figure(tmp_path):
    out = subprocess.run([str(ROOT / "bin" / "soak"), "--minutes", "0.3", "--sample", "5",
                          "--rate", "40", "--retention", "5", "--json", str(tmp_path / "s.json")],
                         capture_output=True, text=True, timeout=110, cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-2000:]
    report = json.loads((tmp_path / "s.json").read_text())
    samples = report["samples"]
    assert len(samples) >= 2
    for key in ("total_mib", "heap_mib", "index_mib", "live", "dead", "claim_p99_ms",
                "enqueue_p99_ms", "rss_supervisor_mib", "rss_producer_mib",
                "rss_consumer_max_mib", "rss_forker_max_mib", "idx_tasks_claim_idx_mib"):
        assert key in samples[-1], key
    assert samples[-1]["rate"] > 30
    assert "end/start" in out.stdout and "claim_p99_ms" in out.stdout
    assert report["node_log_problems"] == []
