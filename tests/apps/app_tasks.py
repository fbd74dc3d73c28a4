"""Tasks an application would write: typed, async, using the job context and logging,
with retry rules and hooks. The hooks append what they were given to the JSON-lines file
named by the job's HOOK_LOG environment variable (a node passes its environment down)."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import time
from typing import Any

import stagerunner
from stagerunner import Backoff, Snooze, hooks, task

log = logging.getLogger("myapp.jobs")


@task
def add(a: int, b: int) -> int:
    return a + b


@task
def scale(value: float, *, factor: float = 2.0) -> float:
    return value * factor


@task
async def fetch(n: int, delay: float = 0.0) -> dict[str, Any]:
    await asyncio.sleep(delay)
    return {"n": n, "loop": type(asyncio.get_running_loop()).__name__}


@task(timeout=0.5, max_attempts=1)
async def async_forever() -> None:
    while True:
        await asyncio.sleep(3600)


@task(max_attempts=4)
def whoami() -> dict[str, Any]:
    ctx = stagerunner.current()
    return {"id": ctx.id, "name": ctx.name, "attempt": ctx.attempt,
            "max_attempts": ctx.max_attempts, "queue": ctx.queue,
            "enqueued_at": ctx.enqueued_at.isoformat() if ctx.enqueued_at else None,
            "deadline": ctx.deadline.isoformat() if ctx.deadline else None,
            "started_at": ctx.started_at.isoformat() if ctx.started_at else None,
            "now": time.time()}


@task
def chatty(message: str) -> str:
    log.info("working on %s", message, extra={"step": "one"})
    log.warning("almost done")
    return message


@task(max_attempts=5, retry_on=(ConnectionError,), backoff=Backoff(0.05, 0.1, 0.0))
def flaky(kind: str) -> None:
    """Fails with `kind`: ConnectionError is retried, anything else is not."""
    if kind == "connection":
        raise ConnectionError("the network blinked")
    raise ValueError("bad input")


@task(max_attempts=5, discard_on=(KeyError,), backoff=Backoff(0.05, 0.1, 0.0))
def picky(key: str) -> None:
    raise KeyError(key)


@task(max_attempts=1)
def snoozer(path: str, times: int) -> int:
    """Snoozes `times` times (counting runs in `path`), then returns its attempt number."""
    runs = int(open(path).read()) if os.path.exists(path) else 0
    with open(path, "w") as f:
        f.write(str(runs + 1))
    if runs < times:
        raise Snooze(0.05)
    return stagerunner.current().attempt


@task(max_attempts=1)
def fails(message: str) -> None:
    raise RuntimeError(message)


def _record(kind: str, ctx: Any, **more: Any) -> None:
    path = os.environ.get("HOOK_LOG")
    if path:
        with open(path, "a") as f:
            f.write(json.dumps({"hook": kind, "task_id": ctx.id, "name": ctx.name,
                                "attempt": ctx.attempt, "pid": os.getpid(), **more}) + "\n")


def _broken(*args: Any) -> None:
    """Registered first for every kind: with HOOK_RAISE set it raises, and the recording
    hooks below must still run and the task's outcome must not change."""
    if os.environ.get("HOOK_RAISE"):
        raise LookupError("a broken hook")


for _register in (hooks.on_success, hooks.on_failure, hooks.on_timeout, hooks.on_lost):
    _register(_broken)


@hooks.on_success
def _on_success(ctx: Any, result: Any) -> None:
    _record("success", ctx, result=result)


@hooks.on_failure
def _on_failure(ctx: Any, exc: BaseException | None, error: str) -> None:
    _record("failure", ctx, exc=type(exc).__name__ if exc else None, last=error.strip().splitlines()[-1])


@hooks.on_timeout
def _on_timeout(ctx: Any) -> None:
    _record("timeout", ctx)


@hooks.on_lost
def _on_lost(ctx: Any) -> None:
    _record("lost", ctx)


@task(max_attempts=1)
def nap(path: str, seconds: float) -> float:
    """Writes its pid to `path`, then sleeps."""
    with open(path, "w") as f:
        f.write(str(os.getpid()))
    time.sleep(seconds)
    return seconds
