"""The application's side: ``@task`` and enqueueing, by function, by name, in the
tutorial's ``enqueue(module, function, args)`` shape, one at a time or in bulk, inside
the caller's own psycopg transaction when a connection is passed.

Arguments must be JSON (lists, objects, strings, numbers, booleans, null): anything
else is refused here, before it reaches the database.

Task modules import this module (through ``stagerunner.task``), and consumers import
task modules, so at import time it stays lean: psycopg, the store and the settings are
imported inside the functions that enqueue.
"""

from __future__ import annotations

import json
import os
import types
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from stagerunner import registry
from stagerunner.errors import NotJSON

if TYPE_CHECKING:
    import psycopg

    from stagerunner import store

OPTIONS = ("conn", "run_at", "delay", "priority", "queue", "unique_key", "max_attempts", "timeout")

_default: dict[str, Any] = {}  # per-process connection when the caller passes none


class TaskFunction:
    """What ``@task`` returns: still callable directly, plus ``enqueue`` and ``options``."""

    def __init__(self, spec: registry.Spec) -> None:
        self.spec = spec
        self.name = spec.name
        self.__doc__ = spec.func.__doc__
        self.__wrapped__ = spec.func

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self.spec.func(*args, **kwargs)

    def enqueue(self, *args: Any, **kwargs: Any) -> int:
        """Enqueue one run with these arguments; returns the task id."""
        return self.options().enqueue(*args, **kwargs)

    def options(self, **options: Any) -> Bound:
        """Bind enqueue options (conn, run_at, delay, priority, queue, unique_key,
        max_attempts, timeout) and return an object whose ``enqueue`` takes the task's
        own arguments."""
        return Bound(self.spec, options)

    def __repr__(self) -> str:
        return f"<task {self.name}>"


def task(func: Callable[..., Any] | None = None, *, name: str | None = None,
         max_attempts: int | None = None, timeout: float | None = None,
         queue: str = "default", priority: int = 0, cron: str | None = None) -> Any:
    """Register a function as a task, with or without options.

    The stable name defaults to ``module:function``; pass ``name=`` to keep it stable
    across refactors. ``timeout`` (seconds) is capped by STAGERUNNER_MAX_JOB_TIMEOUT.
    ``cron`` ("*/5 * * * *", UTC) makes it periodic: each tick is enqueued once across
    all nodes, with no arguments.
    """

    def decorate(fn: Callable[..., Any]) -> TaskFunction:
        return TaskFunction(registry.register(fn, name=name, max_attempts=max_attempts,
                                              timeout=timeout, queue=queue, priority=priority,
                                              cron=cron))

    return decorate(func) if func is not None else decorate


@dataclass(frozen=True)
class Bound:
    """A task with enqueue options bound: ``send_email.options(delay=60).enqueue(to)``."""

    spec: registry.Spec
    options: dict[str, Any]

    def enqueue(self, *args: Any, **kwargs: Any) -> int:
        return enqueue(self.spec.name, _shape(self.spec.name, args, kwargs), **self.options)


def enqueue(target: Any, function: Any = None, args: Any = None, /, **options: Any) -> int:
    """Enqueue one task; returns its id.

    ``enqueue("app.tasks:send_email", ["a@b.c"])``, ``enqueue(send_email, {"to": "a@b.c"})``
    or the tutorial's ``enqueue(app.tasks, "send_email", ["a@b.c"])``. Options: conn,
    run_at, delay, priority, queue, unique_key, max_attempts, timeout.
    """
    if args is not None or isinstance(function, str) or callable(function):
        name, task_args = _name_of(target, function), args
    else:
        name, task_args = _name_of(target, None), function
    return enqueue_many([(name, task_args)], **options)[0]


def enqueue_many(items: Iterable[tuple[Any, Any]], /, **options: Any) -> list[int]:
    """Enqueue many (name, args) pairs in one INSERT statement; ids in input order."""
    from stagerunner import store

    unknown = set(options) - set(OPTIONS)
    if unknown:
        raise TypeError(f"unknown enqueue option(s): {', '.join(sorted(unknown))}")
    conn = options.pop("conn", None)
    rows = [_new_task(_name_of(name, None), args, options) for name, args in items]
    return store.insert_tasks(conn if conn is not None else _connection(), rows)


def cancel(ids: Iterable[int], /, *, conn: psycopg.Connection[Any] | None = None
           ) -> dict[int, str]:
    """Cancel tasks: waiting ones end ``cancelled`` at once; running ones are killed by
    their node and end ``cancelled``. Returns {id: status now}; finished tasks are left out."""
    from stagerunner import store

    return dict(store.cancel_tasks(conn or _connection(), ids=list(ids)))


def _new_task(name: str, args: Any, options: dict[str, Any]) -> store.NewTask:
    from stagerunner import store

    spec = registry.lookup(name)
    delay = options.get("delay")
    if isinstance(delay, timedelta):
        delay = delay.total_seconds()
    run_at = options.get("run_at")
    if run_at is not None and not isinstance(run_at, datetime):
        raise TypeError(f"run_at must be a datetime, got {type(run_at).__name__}")
    return store.NewTask(
        name=name,
        args=to_json(name, [] if args is None else args),
        queue=options.get("queue") or (spec.queue if spec else "default"),
        priority=int(options.get("priority", spec.priority if spec else 0)),
        max_attempts=int(options.get("max_attempts")
                         or (spec.max_attempts if spec and spec.max_attempts
                             else registry.MAX_ATTEMPTS_DEFAULT)),
        timeout_s=options.get("timeout") or (spec.timeout if spec else None),
        delay_s=delay,
        run_at=run_at,
        unique_key=options.get("unique_key"),
    )


def to_json(name: str, args: Any) -> str:
    """Task arguments as JSON text, or NotJSON saying which value is not JSON."""
    if isinstance(args, tuple):
        args = list(args)
    if not isinstance(args, (list, dict)):
        raise NotJSON(f"arguments for {name} must be a list (positional) or an object "
                      f"(keyword arguments), got {type(args).__name__}")
    try:
        return json.dumps(args, allow_nan=False, default=_refuse)
    except (TypeError, ValueError) as exc:
        raise NotJSON(f"arguments for {name} are not JSON: {exc}") from None


def _refuse(value: Any) -> Any:
    raise TypeError(f"{type(value).__name__} value {value!r:.60} is not JSON")


def _shape(name: str, args: Sequence[Any], kwargs: dict[str, Any]) -> Any:
    if args and kwargs:
        raise NotJSON(f"{name}: pass positional or keyword arguments, not both "
                      "(a task row stores a JSON array or a JSON object)")
    return dict(kwargs) if kwargs else list(args)


def _name_of(target: Any, function: Any) -> str:
    for candidate in (function, target):
        if isinstance(candidate, TaskFunction):
            return candidate.name
    if function is None:
        if isinstance(target, str):
            return target
        if callable(target):
            return f"{target.__module__}:{target.__qualname__}"
        raise TypeError(f"cannot enqueue {target!r}: pass a task, a name or module and function")
    module = target.__name__ if isinstance(target, types.ModuleType) else str(target)
    func = function.__name__ if callable(function) else str(function)
    return f"{module}:{func}"


def _connection() -> psycopg.Connection[Any]:
    """A per-process autocommit connection to the configured (or embedded) database."""
    if _default.get("pid") != os.getpid() or _default["conn"].closed:
        from stagerunner import config, database, store

        settings = config.load()
        db = database.open_database(settings)
        conn = store.connect(db.dsn, pooled=settings.pool_mode == "transaction")
        _default.update(pid=os.getpid(), conn=conn, db=db)
    conn: psycopg.Connection[Any] = _default["conn"]
    return conn
