import threading

import pytest

import stagerunner
import tests.tasks
from stagerunner import inserts, store
from stagerunner.errors import BadArguments, NotJSON

pytestmark = pytest.mark.db


def test_enqueue_by_function_name_and_tutorial_shape(conn, get_task):
    ids = [
        tests.tasks.add.enqueue(1, 2),  # no conn=: the default connection (STAGERUNNER_DATABASE_URL)
        stagerunner.enqueue("tests.tasks:add", [1, 2], conn=conn),
        stagerunner.enqueue(tests.tasks, "add", [1, 2], conn=conn),
        stagerunner.enqueue(tests.tasks.add, {"a": 1, "b": 2}, conn=conn),
        tests.tasks.add.options(conn=conn).enqueue(a=1, b=2),
    ]
    rows = [get_task(i) for i in ids]
    assert {r["name"] for r in rows} == {"tests.tasks:add"}
    assert [r["args"] for r in rows] == [[1, 2], [1, 2], [1, 2], {"a": 1, "b": 2}, {"a": 1, "b": 2}]


@pytest.fixture(autouse=True)
def _default_db(db, monkeypatch):
    """Enqueue without conn= uses STAGERUNNER_DATABASE_URL."""
    from stagerunner import catalog, connections

    monkeypatch.setenv("STAGERUNNER_DATABASE_URL", db)
    connections.close_pools()
    catalog.forget()
    yield
    connections.close_pools()


def test_task_defaults_travel_with_the_row(conn, get_task):
    row = get_task(tests.tasks.custom.options(conn=conn).enqueue())
    assert (row["name"], row["max_attempts"], row["timeout_s"], row["priority"]) == (
        "custom.name", 5, 0.5, 3)


def test_enqueue_inside_the_callers_transaction_rolls_back_with_it(connect, statuses):
    conn = connect()
    with pytest.raises(RuntimeError):
        with conn.transaction():
            stagerunner.enqueue("tests.tasks:ok", [], conn=conn)
            raise RuntimeError("application failed")
    assert statuses() == {}


def test_bulk_enqueue_is_one_statement_and_keeps_input_order(conn, get_task, monkeypatch):
    calls = []
    real = store._run
    monkeypatch.setattr(store, "_run", lambda c, name, p=None: calls.append(name) or real(c, name, p))
    ids = stagerunner.enqueue_many([("tests.tasks:add", [i, i]) for i in range(500)], conn=conn)
    assert calls == ["insert_tasks"]
    assert len(ids) == 500 and [get_task(ids[7])["args"]] == [[7, 7]]


def test_a_large_enqueue_is_staged_with_copy_in_input_order_with_every_option(conn, get_task,
                                                                               connect):
    from datetime import datetime, timedelta, timezone

    n = inserts.COPY_MIN + 7
    at = datetime.now(timezone.utc) + timedelta(hours=1)
    ids = stagerunner.enqueue_many([("tests.tasks:add", [i, i]) for i in range(n)], conn=conn,
                                   queue="bulk", priority=3, max_attempts=5, timeout=2.5, run_at=at)
    assert len(ids) == n and ids == sorted(ids)
    rows = [get_task(ids[i]) for i in (0, 500, n - 1)]
    assert [r["args"] for r in rows] == [[0, 0], [500, 500], [n - 1, n - 1]]
    assert {(r["queue"], r["priority"], r["max_attempts"], r["timeout_s"], r["run_at"]) for r in rows} == {
        ("bulk", 3, 5, 2.5, at)}
    delayed = stagerunner.enqueue_many([("tests.tasks:ok", [])] * n, conn=conn, delay=60)
    assert get_task(delayed[-1])["run_at"] > datetime.now(timezone.utc) + timedelta(seconds=50)
    # inside the caller's transaction it rolls back with it, and leaves no staged row behind
    other = connect()
    before = other.execute("SELECT count(*) FROM stagerunner.tasks").fetchone()[0]
    with pytest.raises(RuntimeError):
        with other.transaction():
            stagerunner.enqueue_many([("tests.tasks:ok", [])] * n, conn=other)
            raise RuntimeError("application failed")
    assert other.execute("SELECT count(*) FROM stagerunner.tasks").fetchone()[0] == before
    again = stagerunner.enqueue_many([("tests.tasks:ok", [])] * n, conn=other)
    assert len(again) == n and len(set(again)) == n
    # two in one transaction of the caller's: the second stages only its own rows
    with other.transaction():
        first = stagerunner.enqueue_many([("tests.tasks:add", [1, i]) for i in range(n)], conn=other)
        second = stagerunner.enqueue_many([("tests.tasks:add", [2, i]) for i in range(n)], conn=other)
    assert len(set(first) | set(second)) == 2 * n
    assert [get_task(second[i])["args"] for i in (0, n - 1)] == [[2, 0], [2, n - 1]]
    assert other.execute("SELECT count(*) FROM stagerunner.tasks WHERE id = ANY(%s)",
                         [first + second]).fetchone()[0] == 2 * n
    # the staging table keeps nothing between transactions
    assert other.execute("SELECT count(*) FROM pg_temp.stagerunner_staged_tasks").fetchone()[0] == 0


def test_a_large_enqueue_with_uniqueness_keys_keeps_the_single_statement(conn, monkeypatch):
    calls = []
    real = store._run
    monkeypatch.setattr(store, "_run", lambda c, name, p=None: calls.append(name) or real(c, name, p))
    items = [("tests.tasks:ok", [])] * inserts.COPY_MIN
    ids = stagerunner.enqueue_many(items, conn=conn, unique_key="one")
    assert calls == ["insert_tasks"] and len(set(ids)) == 1 and len(ids) == inserts.COPY_MIN


def test_delay_and_run_at_schedule_the_task(conn, get_task):
    from datetime import datetime, timedelta, timezone

    later = stagerunner.enqueue("tests.tasks:ok", [], conn=conn, delay=60)
    at = datetime(2999, 1, 1, tzinfo=timezone.utc)
    fixed = stagerunner.enqueue("tests.tasks:ok", [], conn=conn, run_at=at)
    assert get_task(later)["run_at"] - get_task(later)["created_at"] >= timedelta(seconds=59)
    assert get_task(fixed)["run_at"] == at


def test_a_bulk_enqueue_checks_every_call_shape_against_the_signature(conn, statuses):
    """Each shape of call is bound once per enqueue; a new one, however late, is checked."""
    good = [("tests.tasks:add", [i, i]) for i in range(inserts.COPY_MIN)]
    for bad in ([1], {"a": 1, "c": 2}, {"*args": [1], "b": 2, "a": 3}):
        with pytest.raises(BadArguments) as err:
            stagerunner.enqueue_many([*good, ("tests.tasks:add", bad)], conn=conn)
        assert "tests.tasks:add" in str(err.value)
    ids = stagerunner.enqueue_many([*good, ("tests.tasks:add", {"a": 1, "b": 2}),
                                    ("tests.tasks:add", {"*args": [1], "b": 2})], conn=conn)
    assert len(ids) == inserts.COPY_MIN + 2
    assert statuses() == {"waiting": inserts.COPY_MIN + 2}


def test_non_json_arguments_are_refused_before_the_database(conn, statuses):
    with pytest.raises(NotJSON) as err:
        stagerunner.enqueue("tests.tasks:echo", [object()], conn=conn)
    assert "not JSON" in str(err.value)
    with pytest.raises(NotJSON):
        tests.tasks.echo.options(conn=conn).enqueue(1, key={2})
    assert statuses() == {}


def test_positional_and_keyword_arguments_together_are_stored_with_the_reserved_key(conn, get_task):
    task_id = tests.tasks.echo.options(conn=conn).enqueue(1, 2, key="k")
    assert get_task(task_id)["args"] == {"*args": [1, 2], "key": "k"}


def test_a_unique_key_returns_the_existing_task_while_it_is_waiting_or_running(conn, get_task):
    first = stagerunner.enqueue("tests.tasks:ok", [], conn=conn, unique_key="k")
    assert stagerunner.enqueue("tests.tasks:ok", [], conn=conn, unique_key="k") == first
    ids = stagerunner.enqueue_many([("tests.tasks:ok", [])] * 3, conn=conn, unique_key="j")
    assert len(set(ids)) == 1
    conn.execute("UPDATE stagerunner.tasks SET status = 'success', finished_at = now() WHERE id = %s",
                 [first])
    assert stagerunner.enqueue("tests.tasks:ok", [], conn=conn, unique_key="k") != first


def test_concurrent_enqueues_of_one_unique_key_make_one_row(db, connect):
    ids, errors = [], []

    def worker():
        try:
            with store.connect(db) as c:
                for _ in range(20):
                    ids.append(stagerunner.enqueue("tests.tasks:ok", [], conn=c, unique_key="race"))
        except Exception as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=worker) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    count = connect().execute("SELECT count(*) FROM stagerunner.tasks").fetchone()[0]
    assert count == 1 and len(set(ids)) == 1


def test_default_connection_comes_from_the_environment(get_task):
    task_id = tests.tasks.ok.enqueue()
    assert get_task(task_id)["status"] == "waiting"


def _ten_seconds() -> None:
    pass


def test_integer_and_float_timeouts_mix_in_one_enqueue_and_in_the_catalog(conn, get_task):
    """`@task(timeout=10)` next to `@task(timeout=0.5)`: one array parameter of one type
    (psycopg refuses a list of ints and floats), for the INSERT and for the catalog a node
    publishes at start."""
    from stagerunner import catalog, registry

    spec = registry.register(_ten_seconds, name="tests.db.ten_seconds", timeout=10)
    custom = registry.lookup("custom.name")
    assert custom is not None and custom.timeout == 0.5
    ids = stagerunner.enqueue_many([("tests.db.ten_seconds", []), ("custom.name", [])], conn=conn)
    assert [get_task(i)["timeout_s"] for i in ids] == [10.0, 0.5]
    catalog.publish(conn, "node-1", [spec, custom])
    found = dict(conn.execute("SELECT name, timeout_s FROM stagerunner.task_catalog").fetchall())
    assert (found["tests.db.ten_seconds"], found["custom.name"]) == (10.0, 0.5)


def test_arguments_over_1_mib_are_refused_before_anything_is_written(conn, statuses):
    from stagerunner.errors import ArgumentsTooLarge

    with pytest.raises(ArgumentsTooLarge, match="1048580 bytes of JSON, limit 1048576"):
        stagerunner.enqueue("tests.tasks:echo", ["x" * (1 << 20)], conn=conn)
    with pytest.raises(ArgumentsTooLarge):
        stagerunner.enqueue_many([("tests.tasks:echo", ["x"])] * 1500
                                 + [("tests.tasks:echo", ["x" * (1 << 20)])], conn=conn)
    assert statuses() == {}
    # counted as PostgreSQL counts (UTF-8), not as escaped JSON (six bytes a character)
    stagerunner.enqueue("tests.tasks:echo", ["é" * 400_000], conn=conn)
    assert statuses() == {"waiting": 1}
