"""Every code block of the README's "Using stagerunner from your application" runs, in
order, against a real PostgreSQL with a node running the README's own task modules:
files go into a scratch project, the test file runs under pytest with the plugin, the
rest runs as one script (with the Django settings and the FastAPI test client a real
application would have). The Sentry and OpenTelemetry recipes run with the real
packages; what they would send is written to files (tests/apps/recipe_setup.py)."""

from __future__ import annotations

import json
import re
import subprocess
import sys

import pytest

from tests.helpers import ROOT, eventually

pytestmark = [pytest.mark.system, pytest.mark.timeout(180)]
README = (ROOT / "README.md").read_text()
SECTION = README.split("\n## Using stagerunner from your application\n")[1].split("\n## ")[0]
BLOCKS = re.findall(r"```(\w*)\n(.*?)```", SECTION, re.S)

RUNNER = """
import json, sys
import django
from django.conf import settings
from psycopg.conninfo import conninfo_to_dict
from sqlalchemy.engine import URL

DSN = sys.argv[1]
info = conninfo_to_dict(DSN)
SQLALCHEMY_URL = URL.create("postgresql+psycopg", username=info.get("user"), host=info.get("host"),
                            port=int(info.get("port") or 5432), database=info.get("dbname"))
settings.configure(DATABASES={"default": {
    "ENGINE": "django.db.backends.postgresql", "NAME": info["dbname"], "USER": info.get("user", ""),
    "HOST": info.get("host", ""), "PORT": info.get("port", "")}}, USE_TZ=True)
django.setup()
namespace = {"DSN": DSN, "SQLALCHEMY_URL": SQLALCHEMY_URL}
for number, block in json.loads(sys.argv[2]):
    exec(compile(block, f"README.md (application block {number})", "exec"), namespace)
from fastapi.testclient import TestClient
with TestClient(namespace["app"]) as client:
    answer = client.post("/signup/linus@example.com").json()
print(json.dumps(answer))
"""


def _split_blocks():
    files, script = {}, []
    for number, (lang, block) in enumerate(BLOCKS, 1):
        assert lang == "python", f"block {number} is {lang!r}: only python blocks are run"
        first = block.splitlines()[0]
        if re.fullmatch(r"# [\w/]+\.py", first):
            files[first[2:]] = block
        else:
            script.append((number, block))
    return files, script


def test_every_block_of_the_application_section_runs(db, conn, start_node, tmp_path):
    files, script = _split_blocks()
    assert {"myapp/tasks.py", "myapp/observability.py", "tests/test_tasks.py"} <= set(files)
    assert len(script) >= 3
    project = tmp_path / "project"
    for name, text in files.items():
        (project / name).parent.mkdir(parents=True, exist_ok=True)
        (project / name).write_text(text)
    (project / "myapp" / "__init__.py").write_text("")
    path = f"{project}:{ROOT}:{ROOT / 'src'}"
    node = start_node(task_modules="tests.apps.recipe_setup,myapp.tasks,myapp.observability",
                      extra_env={"PYTHONPATH": path, "RECIPE_DIR": str(tmp_path)})
    from stagerunner_tools.nodes import node_env

    env = {**node_env(db, task_modules=""), "PYTHONPATH": path}
    out = subprocess.run([sys.executable, "-c", RUNNER, db, json.dumps(script)], cwd=project,
                         env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stdout + out.stderr
    answer = json.loads(out.stdout.splitlines()[-1])
    assert answer["sent"]["to"] == "linus@example.com"
    emails = {r[0] for r in conn.execute("SELECT email FROM signups")}
    assert emails == {"ada@example.com", "linus@example.com"}

    tests = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                            "tests/test_tasks.py"], cwd=project,
                           env={**env, "STAGERUNNER_TASK_MODULES": "myapp.tasks"},
                           capture_output=True, text=True, timeout=120)
    assert tests.returncode == 0 and "2 passed" in tests.stdout, tests.stdout + tests.stderr

    def recorded(name: str) -> list[dict]:
        target = tmp_path / name
        return [json.loads(line) for line in target.read_text().splitlines()] if target.exists() else []

    events = eventually(lambda: [e for e in recorded("sentry.jsonl")
                                 if e.get("tags", {}).get("task") == "myapp.tasks:add"])
    assert events[0]["exception"]["values"][-1]["type"] == "TypeError"
    assert events[0]["contexts"]["stagerunner"]["attempt"] >= 1
    spans = recorded("spans.jsonl")
    assert {s["status"] for s in spans} == {"OK", "ERROR"}
    assert all(s["name"].startswith("task myapp.tasks:") and s["start"] < s["end"] for s in spans)
    assert "task_id=" in node.log() and "sending to ada@example.com" in node.log()
