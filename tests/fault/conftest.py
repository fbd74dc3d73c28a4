"""Fault-injection tier: fixtures. Every test injects a fault on this machine, then checks
the runner's promises with the support library (``stagerunner_tools``):

- nothing lost and attempts as documented (``invariants.check_rows``);
- no two runs of one task alive at once, no more runs than claims, every success a run
  that ended (``tests.tasks:record`` writes start/tick/end lines; ``Recorder.check``);
- no leaked processes (``nodes.job_leftovers``);
- the log event the README promises for that fault (``node.events(NAME)``).

``private_pg`` is a PostgreSQL server of our own (``pgserver.PrivatePG``) for the tests
that restart, freeze or crash the database; the shared server is never touched.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from stagerunner_tools import dbs
from stagerunner_tools.pgserver import PrivatePG


@pytest.fixture(scope="session")
def private_pg() -> Iterator[PrivatePG]:
    server = PrivatePG.create()
    server.start()
    try:
        yield server
    finally:
        server.destroy()


@pytest.fixture
def private_db(private_pg: PrivatePG) -> Iterator[str]:
    """A fresh database with the schema on the private server."""
    with dbs.fresh_database(private_pg.admin_dsn, "sr_fault", schema=True) as dsn:
        yield dsn
