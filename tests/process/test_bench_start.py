"""bench_start for real: it starts nodes and reads their CPU at their first job."""

import json
import subprocess
import sys

import pytest

from tests.helpers import ROOT, node_env

pytestmark = [pytest.mark.process, pytest.mark.timeout(90)]


def test_bench_start_reports_the_first_job_and_the_cpu_spent_before_it(pg_admin_dsn):
    out = subprocess.run([sys.executable, "-m", "stagerunner_tools.bench_start", "--dsn",
                          pg_admin_dsn, "--starts", "2", "--json"], cwd=ROOT, env=node_env(""),
                         capture_output=True, text=True, timeout=80, check=True).stdout
    report = json.loads(out)
    assert len(report["first_job_s"]) == len(report["cpu_s"]) == 2
    assert all(0 < s < 30 for s in report["first_job_s"])
    # a supervisor, a producer and two consumers at least, each an interpreter's start
    assert all(n >= 4 for n in report["processes"]) and all(c > 0.05 for c in report["cpu_s"])
