"""The supervisor and the producer hold the DSN, and a job runs as the same user: their
memory is closed to the user's other processes (``procs.keep_memory_private``)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from tests.helpers import ROOT

pytestmark = [pytest.mark.process, pytest.mark.timeout(60)]

HOLD = ("import sys, time; from stagerunner import procs\n"
        "if sys.argv[1] == 'private': procs.keep_memory_private()\n"
        "print('ready', flush=True); time.sleep(30)")


def as_nobody(*args: str, **kwargs) -> subprocess.Popen:
    return subprocess.Popen(["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups",
                             *args], cwd="/", env={"PYTHONPATH": f"{ROOT / 'src'}"},
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kwargs)


@pytest.mark.skipif(os.geteuid() != 0 or not os.path.exists("/usr/bin/setpriv"),
                    reason="needs root to run both processes as another user")
def test_a_process_of_the_same_user_cannot_read_a_private_ones_memory():
    holders = {kind: as_nobody(sys.executable, "-c", HOLD, kind) for kind in ("open", "private")}
    try:
        for holder in holders.values():
            assert holder.stdout.readline().strip() == "ready", holder.stderr.read()
        seen = {}
        for kind, holder in holders.items():
            reader = as_nobody("cat", f"/proc/{holder.pid}/environ")
            reader.wait(timeout=10)
            seen[kind] = reader.returncode
        assert seen == {"open": 0, "private": 1}, seen
    finally:
        for holder in holders.values():
            holder.kill()
            holder.wait()
