"""Where the dashboard may live: never in a node's imports, its SQL only in sql/web_*.sql."""

from __future__ import annotations

import subprocess
import sys

import pytest

from tests.helpers import ROOT

pytestmark = pytest.mark.timeout(30)
SRC = ROOT / "src" / "stagerunner"


def test_nodes_and_applications_never_import_the_dashboard():
    code = ("import stagerunner, stagerunner.__main__, stagerunner.consumer, stagerunner.supervisor, sys; "
            "print(' '.join(sys.modules))")
    loaded = set(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                                cwd=ROOT).stdout.split())
    assert not {m for m in loaded if m.startswith("stagerunner.web") or m.startswith("jinja2")}


def test_the_dashboard_keeps_its_sql_in_sql_web_files():
    for path in (SRC / "web").rglob("*.py"):
        text = path.read_text()
        for keyword in ("SELECT ", "UPDATE ", "INSERT INTO", "DELETE FROM"):
            assert keyword not in text, f"{path.name}: {keyword}"
    called = set()
    for path in (SRC / "web").glob("*.py"):
        called |= {part.split('"')[1] for part in path.read_text().split('store.query(conn, ')[1:]}
    files = {p.stem for p in (SRC / "sql").glob("web_*.sql")}
    assert called == files
    for name in files:
        first = (SRC / "sql" / f"{name}.sql").read_text().splitlines()[0]
        assert first.startswith(f"-- {name}: read-only;"), first
