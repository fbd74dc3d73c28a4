"""A FastAPI application that enqueues from its endpoints (the tests drive it): one
endpoint enqueues on the application's pool, one inside its own async transaction, and
one waits for the result."""

from __future__ import annotations

from typing import Any

import psycopg
from fastapi import FastAPI

import stagerunner
from tests.apps import app_tasks

app = FastAPI()
DSN: dict[str, str] = {}


@app.post("/add/{a}/{b}")
async def add(a: int, b: int) -> dict[str, int]:
    task_id = await app_tasks.add.aenqueue(a, b)  # this event loop's pool
    return {"task_id": task_id}


@app.post("/orders/{item}")
async def order(item: str, fail: bool = False) -> dict[str, Any]:
    async with await psycopg.AsyncConnection.connect(DSN["url"]) as conn:
        async with conn.transaction():
            await conn.execute("INSERT INTO orders (item) VALUES (%s)", [item])
            task_id = await app_tasks.scale.options(conn=conn).aenqueue(2.0, factor=10.0)
            if fail:
                raise RuntimeError("payment refused")
    return {"task_id": task_id}


@app.get("/result/{task_id}")
async def result(task_id: int) -> dict[str, Any]:
    return {"result": await stagerunner.aresult(task_id, timeout=20, dsn=DSN["url"])}
