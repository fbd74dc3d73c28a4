"""bench_child for real: it forks every step's children and reports their CPU."""

import json
import subprocess
import sys

import pytest

from tests.helpers import ROOT, node_env

pytestmark = [pytest.mark.process, pytest.mark.timeout(60)]


def test_bench_child_reports_every_step_as_json():
    out = subprocess.run([sys.executable, "-m", "stagerunner_tools.bench_child", "--forks", "100",
                          "--runs", "1", "--json"], cwd=ROOT, env=node_env(""), capture_output=True, text=True,
                         timeout=50, check=True).stdout
    report = json.loads(out)
    steps = ["exit", "group", "setup", "read", "job"]
    assert list(report["steps"]) == [*(f"{s}/{kind}" for s in steps for kind in ("fork", "bare")),
                                     "bare-interpreter"]
    values = report["steps"].values()
    assert all(v["child_ms"] >= 0 and v["parent_ms"] >= 0 for v in values)
    assert sum(v["child_ms"] for v in values) > 0  # os.times counts in clock ticks
    assert all(v["child_faults"] > 0 for v in values)
    assert report["rss_mib"] > 5 and report["mappings"] > 50
    # the baseline's child writes fewer pages than one forked by os.fork from the helper's image
    bare = report["steps"]["bare-interpreter"]["child_faults"]
    assert bare < report["steps"]["exit/fork"]["child_faults"]
