"""@task keeps the function's signature for type checkers: a mypy run over a typed
example module passes, and every mistake in another is reported on its line."""

from __future__ import annotations

import re
import subprocess
import sys

import pytest

from tests.helpers import ROOT

pytestmark = pytest.mark.timeout(240)
HERE = ROOT / "tests" / "apps"


def _mypy(tmp_path, module: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "mypy", "--strict", "--follow-imports=silent",
         "--cache-dir", str(tmp_path / "mypy-cache"), str(HERE / module)],
        cwd=ROOT, capture_output=True, text=True, timeout=200,
        env={"MYPYPATH": f"{ROOT / 'src'}:{ROOT}", "PATH": "/usr/bin:/bin"})


def test_typed_tasks_pass_the_type_checker_and_mistakes_do_not(tmp_path):
    clean = _mypy(tmp_path, "typed_example.py")
    assert clean.returncode == 0, clean.stdout + clean.stderr
    wrong = _mypy(tmp_path, "typed_mistakes.py")
    source = (HERE / "typed_mistakes.py").read_text().splitlines()
    expected = {i for i, line in enumerate(source, 1) if line.endswith("# error")}
    reported = {int(m) for m in re.findall(r"typed_mistakes\.py:(\d+): error", wrong.stdout)}
    assert reported == expected, wrong.stdout
