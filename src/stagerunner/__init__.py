"""stagerunner: a PostgreSQL-backed background job runner.

Public surface::

    import stagerunner

    @stagerunner.task(max_attempts=5, timeout=3)
    def send_email(to: str) -> None: ...

    send_email.enqueue("a@example.com")                 # by function
    stagerunner.enqueue("app.tasks:send_email", ["a@example.com"])   # by name
    stagerunner.enqueue(app.tasks, "send_email", ["a@example.com"])  # the tutorial's shape
    stagerunner.enqueue_many([("app.tasks:send_email", ["a@b.c"])] * 1000, conn=conn)

Only the lean ``client`` (the decorator) is imported eagerly: consumers import this
package, and everything they import is paid on every fork of a job child.
"""

from __future__ import annotations

from typing import Any

from stagerunner.client import task

__all__ = ["cancel", "enqueue", "enqueue_many", "task"]
__version__ = "0.1.0"


def enqueue(target: Any, function: Any = None, args: Any = None, /, **options: Any) -> int:
    from stagerunner import client

    return client.enqueue(target, function, args, **options)


enqueue.__doc__ = "Enqueue one task; see stagerunner.client.enqueue."


def enqueue_many(items: Any, /, **options: Any) -> list[int]:
    from stagerunner import client

    return client.enqueue_many(items, **options)


enqueue_many.__doc__ = "Enqueue many tasks in one statement; see stagerunner.client.enqueue_many."


def cancel(ids: Any, /, **options: Any) -> dict[int, str]:
    from stagerunner import client

    return client.cancel(ids, **options)


cancel.__doc__ = "Cancel waiting or running tasks; see stagerunner.client.cancel."
