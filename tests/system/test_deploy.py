"""The container, without a container engine: the image's install steps are one script
(deploy/install.sh) that the Dockerfile runs and that this test runs in a fresh
virtualenv, then starts a node from it the way the image's entrypoint does. The
Dockerfile and the compose file are checked for what the README promises of them, and
the README shows them as they are."""

from __future__ import annotations

import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest

import stagerunner
from stagerunner.config import MAX_JOB_TIMEOUT_DEFAULT
from stagerunner.supervisor import STOP_GRACE_S
from stagerunner_tools import procfs
from stagerunner_tools.invariants import wait_terminal
from stagerunner_tools.nodes import ROOT, SCRUBBED
from stagerunner_tools.pgserver import free_port
from tests.helpers import eventually

DEPLOY = ROOT / "deploy"
DOCKERFILE = (DEPLOY / "Dockerfile").read_text()
COMPOSE = (DEPLOY / "compose.yaml").read_text()


def instruction(name: str) -> list[str]:
    return [line[len(name) + 1:] for line in DOCKERFILE.replace("\\\n", " ").splitlines()
            if line.startswith(name + " ")]


def test_the_dockerfile_runs_a_non_root_supervisor_behind_tini_from_the_install_script():
    [base] = instruction("FROM")
    assert "slim" in base
    [user] = instruction("USER")
    assert user.split(":")[0] not in ("root", "0")
    assert any("deploy/install.sh /opt/stagerunner /src" in run for run in instruction("RUN"))
    [entry] = instruction("ENTRYPOINT")  # exec form: tini is PID 1 and signals the supervisor
    assert entry.startswith("[") and '"/usr/bin/tini", "--", "stagerunner"' in entry
    [health] = instruction("HEALTHCHECK")
    assert 'CMD ["stagerunner", "healthcheck"]' in health
    assert instruction("STOPSIGNAL") == ["SIGTERM"]


def test_compose_gives_a_stop_grace_period_above_the_longest_job_deadline():
    grace = re.search(r"stop_grace_period: (\d+)s", COMPOSE)
    assert grace and int(grace.group(1)) > MAX_JOB_TIMEOUT_DEFAULT + STOP_GRACE_S
    cap = re.search(r'STAGERUNNER_MAX_JOB_TIMEOUT: "(\d+)"', COMPOSE)
    assert cap and int(grace.group(1)) > int(cap.group(1)) + STOP_GRACE_S
    assert "service_completed_successfully" in COMPOSE  # migrate once, before the workers


def test_the_readme_shows_the_dockerfile_and_the_compose_file_as_they_are():
    readme = (ROOT / "README.md").read_text()
    assert DOCKERFILE.strip() in readme
    assert COMPOSE.strip() in readme


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_the_install_script_gives_a_working_node_in_a_fresh_virtualenv(db, conn, tmp_path: Path):
    prefix = tmp_path / "opt-stagerunner"
    out = subprocess.run(["bash", str(DEPLOY / "install.sh"), str(prefix), str(ROOT)],
                         capture_output=True, text=True, timeout=280,
                         env={"PATH": "/usr/bin:/bin", "PYTHON": sys.executable,
                              "HOME": str(tmp_path)})
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == f"stagerunner {stagerunner.__version__}"
    # the image's entrypoint: the console script, the installed package only (no src/ on
    # the path), the image's environment
    port = free_port()
    env = {"PATH": f"{prefix}/bin:/usr/bin:/bin", "HOME": str(tmp_path),
           "STAGERUNNER_DATABASE_URL": db, "STAGERUNNER_TASK_MODULES": "stagerunner.examples",
           "STAGERUNNER_CONSUMERS": "2", "STAGERUNNER_METRICS_PORT": str(port),
           "STAGERUNNER_LOG_FORMAT": "json"}
    assert not set(env) & set(SCRUBBED)
    log = tmp_path / "node.log"
    with open(log, "wb") as sink:
        node = subprocess.Popen([str(prefix / "bin" / "stagerunner"), "run"], cwd=tmp_path,
                                env=env, stdout=sink, stderr=subprocess.STDOUT,
                                start_new_session=True)
    try:
        eventually(lambda: b"node started" in log.read_bytes(), timeout=30)
        task = stagerunner.enqueue("stagerunner.examples:add", [2, 3], conn=conn)
        wait_terminal(conn, [task], timeout=30)
        assert conn.execute("SELECT status::text, result FROM stagerunner.tasks WHERE id = %s",
                            [task]).fetchone() == ("success", 5)
        health = lambda: subprocess.run([str(prefix / "bin" / "stagerunner"), "healthcheck"],  # noqa: E731
                                        env=env, capture_output=True, text=True, timeout=30)
        eventually(lambda: health().returncode == 0, timeout=10)
        where = subprocess.run([str(prefix / "bin" / "python"), "-c",
                                "import stagerunner; print(stagerunner.__file__)"],
                               env=env, capture_output=True, text=True, timeout=30)
        assert where.stdout.startswith(str(prefix)), where.stdout
        node.send_signal(signal.SIGTERM)
        assert node.wait(timeout=60) == 0
    finally:
        if node.poll() is None:
            procfs.kill_tree(node.pid)
            node.wait(timeout=10)
