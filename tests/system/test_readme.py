"""The README is the front door: its examples run and it documents every setting and command."""

import re

import pytest

from stagerunner.config import field_env_names
from tests.helpers import ROOT

README = (ROOT / "README.md").read_text()


def test_every_setting_is_documented():
    missing = [name for name in field_env_names() if name not in README]
    assert missing == []


def test_every_cli_command_is_documented():
    from stagerunner.cli import build_parser

    sub = next(a for a in build_parser()._actions if a.dest == "command")
    missing = [c for c in sub.choices if f"`{c}" not in README]
    assert missing == []


def test_every_status_is_documented():
    for status in ("waiting", "running", "success", "error", "timeout", "cancelled"):
        assert f"| `{status}` |" in README


@pytest.mark.db
def test_the_python_example_runs(db, monkeypatch, conn):
    from stagerunner import connections

    [block] = [b for b in re.findall(r"```python\n(.*?)```", README, re.S) if "# readme-example" in b]
    monkeypatch.setenv("STAGERUNNER_DATABASE_URL", db)
    connections.close_pools()
    try:
        exec(compile(block, "README.md", "exec"), {"DSN": db})
    finally:
        connections.close_pools()
    count = conn.execute("SELECT count(*) FROM stagerunner.tasks").fetchone()[0]
    assert count == 1 + 1 + 1 + 1 + 1 + 1000 + 1
