"""Enqueue inside the application's transaction through its ORM, with the real frameworks
on real PostgreSQL: the task exists after the commit, not before, and never after a
rollback. Also a psycopg_pool pool."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys

import pytest

import stagerunner
from tests.apps import app_tasks
from tests.helpers import ROOT

pytestmark = [pytest.mark.db, pytest.mark.timeout(60)]


def _names(conn) -> list[str]:
    return [r[0] for r in conn.execute("SELECT name FROM stagerunner.tasks ORDER BY id")]


def _url(db: str):
    from psycopg.conninfo import conninfo_to_dict
    from sqlalchemy.engine import URL

    info = conninfo_to_dict(db)
    return URL.create("postgresql+psycopg", username=info.get("user"), password=info.get("password"),
                      host=info.get("host"), port=int(info.get("port") or 5432),
                      database=info.get("dbname"))


def test_sqlalchemy_session_commits_and_rolls_back_the_task_with_the_application(db, conn):
    from sqlalchemy import create_engine, text
    from sqlalchemy.orm import Session

    engine = create_engine(_url(db))
    with engine.connect() as setup:
        setup.execute(text("CREATE TABLE orders (id serial PRIMARY KEY, item text)"))
        setup.commit()
    with Session(engine) as session:
        session.execute(text("INSERT INTO orders (item) VALUES ('book')"))
        task_id = app_tasks.add.options(conn=session).enqueue(1, 2)
        assert _names(conn) == []  # not visible before the commit
        session.commit()
    assert _names(conn) == ["tests.apps.app_tasks:add"] and isinstance(task_id, int)
    with Session(engine) as session:
        session.execute(text("INSERT INTO orders (item) VALUES ('pen')"))
        stagerunner.enqueue("tests.apps.app_tasks:add", [3, 4], conn=session)
        session.rollback()
    assert len(_names(conn)) == 1
    assert conn.execute("SELECT count(*) FROM orders").fetchone()[0] == 1
    engine.dispose()


def test_sqlalchemy_connection_inside_begin(db, conn):
    from sqlalchemy import create_engine

    engine = create_engine(_url(db))
    with pytest.raises(RuntimeError):
        with engine.begin() as connection:
            app_tasks.add.options(conn=connection).enqueue(1, 1)
            raise RuntimeError("the request failed")
    assert _names(conn) == []
    with engine.begin() as connection:
        stagerunner.enqueue_many([("tests.apps.app_tasks:add", [i, i]) for i in range(3)],
                                 conn=connection)
    assert len(_names(conn)) == 3
    engine.dispose()


def test_sqlalchemy_async_session_and_connection(db, conn):
    from sqlalchemy.ext.asyncio import AsyncSession, create_async_engine

    async def main() -> None:
        engine = create_async_engine(_url(db))
        async with AsyncSession(engine) as session:
            await app_tasks.add.options(conn=session).aenqueue(1, 2)
            assert _names(conn) == []
            await session.commit()
        async with AsyncSession(engine) as session:
            await app_tasks.add.options(conn=session).aenqueue(5, 6)
            await session.rollback()
        async with engine.begin() as connection:
            await stagerunner.aenqueue("tests.apps.app_tasks:add", [7, 8], conn=connection)
        await engine.dispose()

    asyncio.run(main())
    args = [r[0] for r in conn.execute("SELECT args FROM stagerunner.tasks ORDER BY id")]
    assert args == [[1, 2], [7, 8]]


def test_an_engine_on_another_driver_is_refused_with_the_reason(db):
    from sqlalchemy import create_engine

    engine = create_engine("sqlite://")
    with engine.connect() as connection, pytest.raises(TypeError, match="psycopg 3"):
        app_tasks.add.options(conn=connection).enqueue(1, 1)


def test_a_psycopg_pool_is_accepted(db, conn):
    from psycopg_pool import ConnectionPool

    with ConnectionPool(db, kwargs={"autocommit": True}, min_size=1, max_size=2) as pool:
        ids = [app_tasks.add.options(conn=pool).enqueue(i, i) for i in range(3)]
    assert len(set(ids)) == 3 and len(_names(conn)) == 3


DJANGO = """
import json, sys
import django, psycopg
from django.conf import settings
from psycopg.conninfo import conninfo_to_dict

info = conninfo_to_dict(sys.argv[1])
settings.configure(DATABASES={"default": {
    "ENGINE": "django.db.backends.postgresql", "NAME": info["dbname"], "USER": info.get("user", ""),
    "HOST": info.get("host", ""), "PORT": info.get("port", "")}}, USE_TZ=True)
django.setup()
from django.db import connection, transaction
from tests.apps import app_tasks

observer = psycopg.connect(sys.argv[1], autocommit=True)
count = lambda: observer.execute("SELECT count(*) FROM stagerunner.tasks").fetchone()[0]
seen = {}
with transaction.atomic():
    app_tasks.add.options(conn=connection).enqueue(1, 2)
    seen["inside_atomic"] = count()
seen["after_commit"] = count()
try:
    with transaction.atomic():
        app_tasks.add.options(conn=connection).enqueue(3, 4)
        raise RuntimeError("the view failed")
except RuntimeError:
    pass
seen["after_rollback"] = count()
app_tasks.add.options(conn=connection).enqueue(5, 6)  # autocommit outside atomic
seen["autocommit"] = count()
print(json.dumps(seen))
"""


def test_django_transaction_atomic_commits_and_rolls_back_the_task(db):
    from stagerunner_tools.nodes import node_env

    out = subprocess.run([sys.executable, "-c", DJANGO, db], cwd=ROOT, env=node_env(db),
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout) == {"inside_atomic": 0, "after_commit": 1, "after_rollback": 1,
                                      "autocommit": 2}
