"""How a fork helper forks its job children (``stagerunner.forking``): bare, without
Python's at-fork hooks, unless a module registered one that must run. Each case runs in
a fresh interpreter, as a consumer is one (a node's children: tests/apps/test_jobs.py)."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest

from tests.helpers import ROOT

pytestmark = [pytest.mark.process, pytest.mark.timeout(60)]


def run(code: str, tmp_path=None) -> dict:
    env_path = f"{ROOT / 'src'}:{ROOT}:{tmp_path or ''}"
    out = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True,
                         text=True, timeout=30, cwd=ROOT, env={"PYTHONPATH": env_path})
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout.splitlines()[-1])


FORK_TWICE = """
    import json, os, random
    from stagerunner import forking

    os.register_at_fork(after_in_child=lambda: os.write(w, b"hook "))
    r, w = os.pipe()
    def child():
        os.write(w, json.dumps(random.random()).encode() + b"\\n")
    for _ in range(2):
        pid = forking.fork_running({w}, child, bare=BARE)
        assert os.waitpid(pid, 0)[1] == 0
    os.close(w)
    text = os.read(r, 4096).decode()
    print(json.dumps({"hooks": text.count("hook"), "values": text.replace("hook ", "").split()}))
"""


def test_a_bare_fork_skips_pythons_hooks_yet_every_child_draws_its_own_random_numbers():
    bare = run(FORK_TWICE.replace("BARE", "True"))
    assert bare["hooks"] == 0
    assert len(set(bare["values"])) == 2  # random reseeded for each child, as its hook would
    full = run(FORK_TWICE.replace("BARE", "False"))
    assert full["hooks"] == 2 and len(set(full["values"])) == 2


def test_a_registration_after_the_watch_starts_names_its_module_but_the_stdlibs_do_not(
        tmp_path):
    (tmp_path / "exporter.py").write_text(
        "import os\nos.register_at_fork(after_in_child=lambda: None)\n")
    (tmp_path / "lowlevel.py").write_text(
        "import posix\nposix.register_at_fork(before=lambda: None)\n")
    found = run("""
        import json
        from stagerunner import forking
        before = forking.blockers()
        forking.watch_hooks()
        import asyncio, concurrent.futures.thread  # the stdlib's own hooks (asyncio's: 3.12+)
        clean = forking.blockers()
        import exporter, lowlevel
        print(json.dumps({"before": before, "clean": clean, "after": forking.blockers()}))
    """, tmp_path)
    assert found == {"before": ["(hooks not watched)"], "clean": [],
                     "after": ["exporter", "lowlevel"]}


def test_a_users_script_that_spawn_runs_again_in_a_consumer_counts_as_one_that_may_hook(
        tmp_path):
    script = tmp_path / "myrunner.py"
    script.write_text(textwrap.dedent("""
        import json, multiprocessing, os

        os.register_at_fork(after_in_child=lambda: None)  # before any watch: unseen

        def probe(queue):
            from stagerunner import forking
            forking.watch_hooks()
            queue.put(forking.blockers())

        if __name__ == "__main__":
            ctx = multiprocessing.get_context("spawn")
            queue = ctx.Queue()
            process = ctx.Process(target=probe, args=(queue,))
            process.start()
            print(json.dumps(queue.get()))
            process.join()
    """))
    out = subprocess.run([sys.executable, str(script)], capture_output=True, text=True,
                         timeout=30, cwd=tmp_path, env={"PYTHONPATH": str(ROOT / "src")})
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout) == [str(script)]


def test_pips_stagerunner_script_as_main_is_not_a_reason_to_fork_slowly():
    import types

    import stagerunner.cli
    from stagerunner import forking

    script = types.ModuleType("__main__")
    script.__file__ = "/venv/bin/stagerunner"
    script.re, script.sys, script.main = __import__("re"), sys, stagerunner.cli.main
    assert forking._only_starts_stagerunner(script)
    script.os = __import__("os")  # a script that does anything more
    assert not forking._only_starts_stagerunner(script)
    assert forking._only_starts_stagerunner(types.ModuleType("__main__"))  # the -c bootstrap


def test_a_module_imported_before_the_watch_began_counts_as_one_that_may_hook(tmp_path):
    (tmp_path / "early.py").write_text("X = 1\n")
    found = run("""
        import json
        import early
        from stagerunner import forking
        forking.watch_hooks()
        print(json.dumps(forking.blockers()))
    """, tmp_path)
    assert found == ["early"]
