"""bin/chaos, short: 20 seconds of random stage kills and terminated connections must PASS."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from tests.helpers import ROOT

pytestmark = [pytest.mark.system, pytest.mark.timeout(240)]


def test_twenty_seconds_of_chaos_pass(pg_admin_dsn):
    env = {**os.environ, "PYTHON": sys.executable}
    out = subprocess.run([str(ROOT / "bin" / "chaos"), "--seconds", "20", "--dsn", pg_admin_dsn],
                         cwd=ROOT, env=env, capture_output=True, text=True, timeout=220)
    verdict = out.stdout.strip().splitlines()[-1] if out.stdout.strip() else ""
    print(verdict)
    print(out.stderr[-3000:], file=sys.stderr)
    assert verdict.startswith("chaos: PASS 20s "), verdict + "\n" + out.stderr[-3000:]
    assert out.returncode == 0
    fields = dict(f.split("=", 1) for f in verdict.split() if "=" in f)
    assert fields["overlaps"] == "0" and fields["leaked"] == "0" and fields["running"] == "0"
    assert int(fields["tasks"]) > 100
    kills = {stage: int(n) for stage, n in (k.split(":") for k in fields["kills"].split(","))}
    assert kills["consumer"] >= 1 and sum(kills.values()) >= 3, kills
    assert int(fields["terminations"]) > 0
