"""The pytest plugin, as a user's project would use it: a fresh project directory with its
own task module and tests, run by pytest in a subprocess (the plugin comes from the
installed entry point)."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

from stagerunner_tools.nodes import ROOT, node_env

pytestmark = [pytest.mark.system, pytest.mark.timeout(120)]

TASKS = '''
import stagerunner

@stagerunner.task
def add(a: int, b: int) -> int:
    return a + b

@stagerunner.task(max_attempts=1)
def divide(a: float, b: float) -> float:
    return a / b

@stagerunner.task
async def shout(word: str, *, times: int = 1) -> str:
    return " ".join([word.upper()] * times)
'''

TESTS = '''
import asyncio, pytest
import stagerunner
from myproject.tasks import add, divide, shout
from stagerunner.errors import BadArguments

def test_inline(stagerunner_inline):
    assert add.enqueue(2, 3).result == 5
    failed = divide.enqueue(1, 0)
    assert failed.status == "error" and "ZeroDivisionError" in failed.error
    assert shout.enqueue("hi", times=2).result == "HI HI"
    assert stagerunner.enqueue("myproject.tasks:add", [1, 1]).result == 2
    with pytest.raises(BadArguments):
        add.enqueue(1)
    with pytest.raises(stagerunner.errors.NotJSON):
        add.enqueue(1, {2})
    assert [o.status for o in stagerunner_inline.outcomes] == ["success", "error", "success", "success"]

def test_inline_async(stagerunner_inline):
    async def main():
        return await shout.aenqueue("yo")
    assert asyncio.run(main()).result == "YO"

def test_a_real_node(stagerunner_node):
    add.enqueue(2, 2)
    divide.enqueue(1, 0)
    shout.enqueue("ok")
    done = stagerunner_node.drain()
    assert [(t["name"], t["status"], t["result"]) for t in done] == [
        ("myproject.tasks:add", "success", 4),
        ("myproject.tasks:divide", "error", None),
        ("myproject.tasks:shout", "success", "OK")]
'''


def _project(tmp_path):
    (tmp_path / "myproject").mkdir()
    (tmp_path / "myproject" / "__init__.py").write_text("")
    (tmp_path / "myproject" / "tasks.py").write_text(textwrap.dedent(TASKS))
    (tmp_path / "test_mytasks.py").write_text(textwrap.dedent(TESTS))
    (tmp_path / "pytest.ini").write_text("[pytest]\nstagerunner_task_modules = myproject.tasks\n")


def _pytest(tmp_path, env, *args):
    return subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *args],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=100)


def test_a_users_tasks_are_tested_inline_and_on_a_real_node(tmp_path, db):
    _project(tmp_path)
    env = node_env(db)
    env.pop("STAGERUNNER_TASK_MODULES")  # from the ini file
    env["PYTHONPATH"] = f"{tmp_path}:{ROOT / 'src'}"
    out = _pytest(tmp_path, env)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "3 passed" in out.stdout


def test_nothing_starts_an_embedded_server_behind_a_tests_back(tmp_path):
    _project(tmp_path)
    env = {k: v for k, v in node_env("").items() if not k.startswith("STAGERUNNER_")}
    env["PYTHONPATH"] = f"{tmp_path}:{ROOT / 'src'}"
    env["STAGERUNNER_DATA_DIR"] = str(tmp_path / "no-server-here")
    out = _pytest(tmp_path, env, "-k", "real_node")
    assert out.returncode == 1
    assert "STAGERUNNER_DATABASE_URL" in out.stdout
    assert not (tmp_path / "no-server-here").exists()
