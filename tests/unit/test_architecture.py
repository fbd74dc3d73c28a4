"""The import rules that keep consumers lean and database-free."""

import subprocess
import sys

from tests.helpers import ROOT


def _modules_after(code: str) -> set[str]:
    out = subprocess.run([sys.executable, "-c", code + "\nimport sys; print(' '.join(sys.modules))"],
                         capture_output=True, text=True, check=True, cwd=ROOT)
    return set(out.stdout.split())


def test_consumers_never_import_psycopg_or_pydantic():
    loaded = _modules_after("import stagerunner.consumer, stagerunner.executor")
    assert "psycopg" not in loaded
    assert "pydantic" not in loaded


def test_task_modules_importing_stagerunner_stay_lean():
    loaded = _modules_after("import stagerunner, tests.tasks")
    assert "psycopg" not in loaded and "pydantic" not in loaded


def test_no_sql_outside_the_sql_directory():
    offenders = []
    for path in (ROOT / "src" / "stagerunner").glob("*.py"):
        text = path.read_text()
        for keyword in ("SELECT ", "UPDATE stagerunner", "INSERT INTO", "DELETE FROM"):
            # store.py loads sql/; bench.py and chaos.py are harnesses that read timings and check invariants directly
            if keyword in text and path.name not in ("store.py", "bench.py", "chaos.py"):
                offenders.append(f"{path.name}: {keyword}")
    assert offenders == []


def test_nothing_is_unpickled():
    for path in (ROOT / "src" / "stagerunner").rglob("*.py"):
        text = path.read_text()
        assert "pickle.loads" not in text and "marshal.loads" not in text, path
