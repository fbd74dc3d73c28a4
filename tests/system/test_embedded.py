"""The embedded server is private to the user who runs stagerunner: no TCP port, a
password on every connection, a socket directory nobody else may enter (also when the data
directory's path is too long for a socket), and nobody else gets in."""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
import sys
import tempfile
from pathlib import Path

import psycopg
import pytest

from stagerunner.embedded import EmbeddedServer
from tests.helpers import ROOT

pytestmark = [pytest.mark.system, pytest.mark.timeout(120)]


@pytest.fixture(params=["short", "long"])
def server(request):
    root = Path(tempfile.mkdtemp(prefix="sr-emb-"))
    os.chmod(root, 0o755)
    deep = root / ("d" * 80 if request.param == "long" else "d") / "pgdata"
    embedded = EmbeddedServer(deep)
    embedded.start()
    yield embedded
    embedded.release()
    shutil.rmtree(root, ignore_errors=True)
    if embedded.socket_dir().is_relative_to("/tmp/stagerunner-"):
        shutil.rmtree(embedded.socket_dir(), ignore_errors=True)


def test_it_listens_on_no_port_and_wants_its_password(server):
    with psycopg.connect(server.dsn()) as conn:
        assert conn.execute("SHOW listen_addresses").fetchone() == ("",)
    for dsn in (server.public_dsn(), server.public_dsn().replace("postgres@", "postgres:wrong@")):
        with pytest.raises(psycopg.OperationalError, match="password"):
            psycopg.connect(dsn, connect_timeout=5)
    assert stat.S_IMODE(server.password_file.stat().st_mode) == 0o600


def test_its_socket_directory_is_private_whatever_the_path(server):
    sockets = server.socket_dir()
    mode = sockets.stat().st_mode
    assert stat.S_IMODE(mode) == 0o700, oct(mode)
    assert len(str(sockets / ".s.PGSQL.5432")) <= 107


@pytest.mark.skipif(os.geteuid() != 0 or not shutil.which("psql"),
                    reason="needs root (to act as another user) and psql")
def test_another_user_of_the_machine_cannot_connect(server):
    out = subprocess.run(["runuser", "-u", "nobody", "--", shutil.which("psql") or "psql",
                          server.dsn(), "-c", "SELECT 1"], cwd="/", capture_output=True,
                         text=True, timeout=60)
    assert out.returncode != 0 and "Permission denied" in out.stderr, out.stdout + out.stderr


def test_the_node_log_shows_how_to_connect_but_never_the_password(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("STAGERUNNER_", "PG"))
           and k != "DATABASE_URL"}
    env.update(STAGERUNNER_DATA_DIR=str(tmp_path / "pgdata"), PYTHONPATH=str(ROOT))
    out = subprocess.run([sys.executable, "-m", "stagerunner", "migrate"], cwd=ROOT, env=env,
                         capture_output=True, text=True, timeout=90)
    assert out.returncode == 0, out.stderr
    password = (tmp_path / "pgdata.private" / "password").read_text().strip()
    assert password not in out.stdout + out.stderr
    EmbeddedServer(tmp_path / "pgdata").release()
