"""stagerunner: a PostgreSQL-backed background job runner.

Public surface::

    import stagerunner

    @stagerunner.task(max_attempts=5, timeout=3)
    def send_email(to: str) -> None: ...

    send_email.enqueue("a@example.com")                 # by function (typed)
    await send_email.aenqueue("a@example.com")          # from async code
    stagerunner.enqueue("app.tasks:send_email", ["a@example.com"])   # by name
    stagerunner.enqueue(app.tasks, "send_email", ["a@example.com"])  # the tutorial's shape
    stagerunner.enqueue_many([("app.tasks:send_email", ["a@b.c"])] * 1000, conn=conn)
    stagerunner.result(task_id, timeout=10)              # wait for its JSON result
    stagerunner.current()                                # inside a job: its context

Only lean modules are imported eagerly (the decorator, the job context, hooks, the retry
types): consumers import this package, and everything they import is paid on every
fork of a job child. psycopg, the settings and the pools load on the first enqueue.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from stagerunner import hooks
from stagerunner.client import TaskFunction, task
from stagerunner.context import JobContext, current
from stagerunner.results import ResultTimeout, TaskFailed, TaskNotFound
from stagerunner.retry import Backoff, Snooze

__all__ = ["Backoff", "JobContext", "ResultTimeout", "Snooze", "TaskFailed", "TaskFunction",
           "TaskNotFound", "aenqueue", "aenqueue_many", "aresult", "cancel", "current",
           "enqueue", "enqueue_many", "hooks", "result", "task"]
__version__ = "0.1.0"


def enqueue(target: Any, function: Any = None, args: Any = None, /, **options: Any) -> int:
    """Enqueue one task; see stagerunner.client.enqueue."""
    from stagerunner import client

    return client.enqueue(target, function, args, **options)


def enqueue_many(items: Iterable[tuple[Any, Any]], /, **options: Any) -> list[int]:
    """Enqueue many tasks in one statement; see stagerunner.client.enqueue_many."""
    from stagerunner import client

    return client.enqueue_many(items, **options)


async def aenqueue(target: Any, function: Any = None, args: Any = None, /, **options: Any
                   ) -> int:
    """Enqueue one task from async code; see stagerunner.aio.enqueue."""
    from stagerunner import aio

    return await aio.enqueue(target, function, args, **options)


async def aenqueue_many(items: Iterable[tuple[Any, Any]], /, **options: Any) -> list[int]:
    """Enqueue many tasks in one statement from async code; see stagerunner.aio."""
    from stagerunner import aio

    return await aio.enqueue_many(items, **options)


def cancel(ids: Iterable[int], /, **options: Any) -> dict[int, str]:
    """Cancel waiting or running tasks; see stagerunner.client.cancel."""
    from stagerunner import client

    return client.cancel(ids, **options)


def result(task_id: int, *, timeout: float | None = None, dsn: str | None = None) -> Any:
    """Wait for a task's JSON result; see stagerunner.results."""
    from stagerunner import results

    return results.result(task_id, timeout=timeout, dsn=dsn)


async def aresult(task_id: int, *, timeout: float | None = None, dsn: str | None = None) -> Any:
    """Wait for a task's JSON result from async code; see stagerunner.results."""
    from stagerunner import results

    return await results.aresult(task_id, timeout=timeout, dsn=dsn)
