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

import itertools
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg
import pytest

from stagerunner_tools import dbs, invariants
from stagerunner_tools.pgserver import PrivatePG
from stagerunner_tools.runs import Records, Run

_counter = itertools.count()


@dataclass
class Recorder(Records):
    """The run records of one test; one key per task of tests.tasks:record."""

    keys: dict[int, str] = field(default_factory=dict)

    def args(self, key: str, seconds: float = 0.0) -> list[Any]:
        return [str(self.path), key, seconds]

    def enqueue(self, conn: psycopg.Connection[Any], count: int, seconds: float, prefix: str = "k",
                **cols: Any) -> list[int]:
        base = len(self.keys)
        keys = [f"{prefix}{base + i}" for i in range(count)]
        ids = invariants.insert_rows(conn, "tests.tasks:record",
                                     [self.args(k, seconds) for k in keys], **cols)
        self.keys.update(zip(ids, keys))
        return ids

    def check(self, conn: psycopg.Connection[Any], ids: list[int] | None = None
              ) -> dict[str, list[Run]]:
        """No overlaps; every run was a claim; a success ran to its end."""
        runs = self.runs()
        found = invariants.rows(conn, ids if ids is not None else list(self.keys))
        problems = {i: p for i, r in found.items()
                    if (p := invariants.run_problems(runs.get(self.keys[i], []), r))}
        assert not problems, f"run records break the promises: {problems}"
        return runs


@pytest.fixture
def recorder(tmp_path: Path) -> Recorder:
    return Recorder(tmp_path / "runs.jsonl")


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
