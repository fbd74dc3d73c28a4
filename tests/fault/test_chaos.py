"""bin/chaos, short: 25 seconds of three nodes on a private server under every fault kind
(stage kills, terminated connections, a frozen node, hostile NOTIFYs, a held lock, a
migration, a PostgreSQL restart) must PASS."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from stagerunner_tools.chaos_faults import KINDS
from tests.helpers import ROOT

pytestmark = [pytest.mark.system, pytest.mark.timeout(90)]


def test_twenty_five_seconds_of_chaos_on_three_nodes_pass():
    env = {**os.environ, "PYTHON": sys.executable}
    out = subprocess.run([str(ROOT / "bin" / "chaos"), "--seconds", "25", "--nodes", "3",
                          "--private", "--consumers", "3"],
                         cwd=ROOT, env=env, capture_output=True, text=True, timeout=85)
    verdict = out.stdout.strip().splitlines()[-1] if out.stdout.strip() else ""
    print(verdict)
    print(out.stderr[-3000:], file=sys.stderr)
    assert verdict.startswith("chaos: PASS 25s "), verdict + "\n" + out.stderr[-3000:]
    assert out.returncode == 0
    fields = dict(f.split("=", 1) for f in verdict.split() if "=" in f)
    assert fields["nodes"] == "3" and fields["private"] == "yes" and fields["stopped"] == "3/3"
    for check in ("lost", "overlaps", "leaked", "hostile_crashes", "crashes", "cancelled",
                  "reruns", "running"):
        assert fields[check] == "0", (check, verdict)
    assert int(fields["tasks"]) > 100
    faults = {kind: int(n) for kind, n in (k.split(":") for k in fields["faults"].split(","))}
    assert set(faults) == set(KINDS) and all(n >= 1 for n in faults.values()), faults
