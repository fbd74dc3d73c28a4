"""The FastAPI example: enqueue from endpoints, inside the request's transaction, and
wait for the result, with a real node running the tasks."""

from __future__ import annotations

import pytest

pytestmark = [pytest.mark.system, pytest.mark.timeout(90)]


def test_a_fastapi_app_enqueues_from_its_endpoints(db, conn, start_node, monkeypatch):
    from fastapi.testclient import TestClient

    from stagerunner import connections
    from tests.apps import fastapi_app

    conn.execute("CREATE TABLE orders (id serial PRIMARY KEY, item text)")
    monkeypatch.setenv("STAGERUNNER_DATABASE_URL", db)
    fastapi_app.DSN["url"] = db
    start_node(task_modules="tests.apps.app_tasks")
    try:
        with TestClient(fastapi_app.app, raise_server_exceptions=False) as client:
            added = client.post("/add/2/3").json()["task_id"]
            ordered = client.post("/orders/book").json()["task_id"]
            assert client.post("/orders/pen", params={"fail": True}).status_code == 500
            assert client.get(f"/result/{added}").json() == {"result": 5}
            assert client.get(f"/result/{ordered}").json() == {"result": 20.0}
    finally:
        connections._pools.clear()
    assert [r[0] for r in conn.execute("SELECT item FROM orders")] == ["book"]
    assert conn.execute("SELECT count(*) FROM stagerunner.tasks").fetchone()[0] == 2
