"""The multi-node tier: several nodes on one database, and nodes through a real PgBouncer.

Every test here checks the runner's promises with the support library, as the fault tier
does (``tests/conftest.py`` provides ``recorder``: run records of ``tests.tasks:record``;
``stagerunner_tools.invariants``: nothing lost, attempts as documented). ``bouncer`` is Debian's pgbouncer in transaction pooling mode on a free
loopback port in front of the test server; where it is not installed the PgBouncer tests
skip, except under CI (``CI`` set), where they fail: ``.ci/run`` installs it.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from stagerunner_tools import bouncer as pgbouncer


@pytest.fixture(scope="session")
def bouncer(pg_admin_dsn: str) -> Iterator[pgbouncer.Bouncer]:
    if pgbouncer.binary() is None:
        why = "pgbouncer is not installed (apt-get install pgbouncer; .ci/run does)"
        if os.environ.get("CI"):
            pytest.fail(why)
        pytest.skip(why)
    server = pgbouncer.Bouncer.start(pg_admin_dsn, pool_mode="transaction", pool_size=4)
    try:
        yield server
    finally:
        server.stop()
