"""Async enqueue: on a psycopg AsyncConnection inside the caller's transaction, in bulk,
through this event loop's own pool, and without paying the first enqueue's imports on
the event loop."""

from __future__ import annotations

import asyncio
import subprocess
import sys

import psycopg
import pytest

import stagerunner
from tests.apps import app_tasks
from tests.helpers import ROOT

pytestmark = [pytest.mark.db, pytest.mark.timeout(60)]


def _count(conn) -> int:
    return conn.execute("SELECT count(*) FROM stagerunner.tasks").fetchone()[0]


def test_aenqueue_commits_and_rolls_back_with_the_callers_async_transaction(db, conn, get_task):
    async def main() -> int:
        async with await psycopg.AsyncConnection.connect(db) as aconn:
            async with aconn.transaction():
                kept = await app_tasks.add.options(conn=aconn).aenqueue(1, 2)
                assert _count(conn) == 0  # not visible before the commit
            with pytest.raises(RuntimeError):
                async with aconn.transaction():
                    await stagerunner.aenqueue("tests.apps.app_tasks:add", [3, 4], conn=aconn)
                    raise RuntimeError("the request failed")
            return kept

    kept = asyncio.run(main())
    assert _count(conn) == 1 and get_task(kept)["args"] == [1, 2]


def test_aenqueue_many_writes_one_statement_in_input_order(db, conn, get_task, monkeypatch):
    from stagerunner import astore

    calls, real = [], astore.query
    monkeypatch.setattr(astore, "query", lambda c, name, p=None: calls.append(name) or real(c, name, p))

    async def main() -> list[int]:
        async with await psycopg.AsyncConnection.connect(db, autocommit=True) as aconn:
            return await stagerunner.aenqueue_many(
                [("tests.apps.app_tasks:add", [i, i]) for i in range(50)], conn=aconn,
                priority=4)

    ids = asyncio.run(main())
    assert calls == ["insert_tasks"]  # the task is registered here: no catalog read either
    assert len(ids) == 50 and get_task(ids[7])["args"] == [7, 7]
    assert get_task(ids[-1])["priority"] == 4


def test_a_large_aenqueue_many_is_staged_with_copy_in_input_order(db, conn, get_task):
    from stagerunner import inserts

    n = inserts.COPY_MIN + 3

    async def main() -> list[int]:
        async with await psycopg.AsyncConnection.connect(db, autocommit=True) as aconn:
            return await stagerunner.aenqueue_many(
                [("tests.apps.app_tasks:add", [i, 1]) for i in range(n)], conn=aconn)

    ids = asyncio.run(main())
    assert len(ids) == n and ids == sorted(ids) and get_task(ids[-1])["args"] == [n - 1, 1]


def test_aenqueue_without_conn_uses_this_loops_pool_and_checks_the_signature(db, conn,
                                                                            monkeypatch):
    from stagerunner import connections
    from stagerunner.errors import BadArguments

    monkeypatch.setenv("STAGERUNNER_DATABASE_URL", db)

    async def main() -> list[int]:
        ids = [await app_tasks.scale.aenqueue(2.0, factor=3.0) for _ in range(5)]
        with pytest.raises(BadArguments):
            await app_tasks.add.aenqueue(1)  # type: ignore[call-arg]
        pool = await connections.apool()
        assert pool.get_stats()["connections_num"] <= connections.POOL_MAX
        await pool.close()
        return ids

    ids = asyncio.run(main())
    connections._pools.clear()
    assert _count(conn) == 5 and len(set(ids)) == 5


def test_aenqueue_through_a_psycopg_pool(db, conn):
    from psycopg_pool import AsyncConnectionPool

    async def main() -> None:
        async with AsyncConnectionPool(db, kwargs={"autocommit": True}, open=False) as pool:
            await app_tasks.add.options(conn=pool).aenqueue(1, 1)

    asyncio.run(main())
    assert _count(conn) == 1


FIRST_ENQUEUE = """
import asyncio, sys, time
import stagerunner
from tests.apps import app_tasks

async def main():
    gaps, last, done = [], time.perf_counter(), False
    async def ticker():
        nonlocal last
        while not done:
            await asyncio.sleep(0.005)
            now = time.perf_counter()
            gaps.append(now - last)
            last = now
    tick = asyncio.create_task(ticker())
    await asyncio.sleep(0.05)
    assert "psycopg" not in sys.modules
    started = time.perf_counter()
    await app_tasks.add.aenqueue(1, 2)
    took = time.perf_counter() - started
    done = True
    await tick
    print(f"{max(gaps):.4f} {took:.4f}")

asyncio.run(main())
"""


def test_the_first_aenqueue_imports_off_the_event_loop(db, conn):
    """The first call imports psycopg, the pool and the settings (~0.3 s of CPU here) in a
    thread: the loop keeps turning meanwhile."""
    from stagerunner_tools.nodes import node_env

    out = subprocess.run([sys.executable, "-c", FIRST_ENQUEUE], cwd=ROOT, env=node_env(db),
                         capture_output=True, text=True, timeout=60, check=True)
    longest_gap, took = map(float, out.stdout.split())
    assert _count(conn) == 1
    # the imports' total is far above the longest stall (the GIL is handed over every 5 ms)
    assert longest_gap < max(0.1, took / 3), (longest_gap, took)


LOOP_ENDS_WHILE_THE_POOL_CONNECTS = """
import asyncio, json
from stagerunner import connections
from tests.apps import app_tasks

async def main():
    await asyncio.gather(*(app_tasks.add.aenqueue(i, i) for i in range(8)))
    pool = await connections.apool()
    opened = sum(key[0] == "async" for key in connections._pools)
    await pool.resize(4, 4)  # three connects start in the background; the loop ends now
    return opened

opened = asyncio.run(main())
print(json.dumps({"opened": opened, "left": len(connections._pools)}))
"""


def test_a_loop_ending_while_its_pool_connects_closes_the_pool_instead_of_hanging(db, conn):
    """psycopg_pool's workers swallow a cancel that lands in a connect and retry: an
    asyncio.run ending then used to hang for good. Concurrent first enqueues share one
    pool, and the ended loop's pool is forgotten (a later loop may reuse its id)."""
    import json

    from stagerunner_tools.nodes import node_env

    out = subprocess.run([sys.executable, "-c", LOOP_ENDS_WHILE_THE_POOL_CONNECTS], cwd=ROOT,
                         env=node_env(db), capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, out.stderr[-2000:]
    assert json.loads(out.stdout.splitlines()[-1]) == {"opened": 1, "left": 0}
    assert _count(conn) == 8
