"""The application's side: ``@task`` and enqueueing, by function, by name, in the
tutorial's ``enqueue(module, function, args)`` shape, one at a time or in bulk, inside
the caller's own transaction when a connection is passed (``connections`` says which
kinds; ``aio`` has the async twins).

``@task`` keeps the function's signature (``ParamSpec``): ``add.enqueue(1, "x")`` is a type
error, and a call that does not bind to the signature is refused here, before anything
is written (``BadArguments``). Arguments must be JSON; positional and keyword arguments
may be mixed (``arguments`` says how a row stores them). A name this process never
imported gets its task's own options from the catalog nodes publish (``catalog``).

Task modules import this module (through ``stagerunner.task``), and consumers import
task modules, so at import time it stays lean: psycopg, the store and the settings are
imported inside the functions that enqueue.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any, Generic, ParamSpec, TypeVar, overload

from stagerunner import arguments, registry
from stagerunner.enqueueing import INLINE, check_options, split_target, steps, to_json
from stagerunner.errors import BadArguments

if TYPE_CHECKING:
    from stagerunner.retry import Backoff

__all__ = ["Bound", "TaskFunction", "cancel", "enqueue", "enqueue_many", "task", "to_json"]

P = ParamSpec("P")
R = TypeVar("R")


class TaskFunction(Generic[P, R]):
    """What ``@task`` returns: still callable directly, plus ``enqueue``, ``aenqueue`` and
    ``options``, all typed with the function's own parameters."""

    def __init__(self, spec: registry.Spec) -> None:
        self.spec = spec
        self.name = spec.name
        self.__doc__ = spec.func.__doc__
        self.__wrapped__ = spec.func

    def __call__(self, *args: P.args, **kwargs: P.kwargs) -> R:
        result: R = self.spec.func(*args, **kwargs)
        return result

    def enqueue(self, *args: P.args, **kwargs: P.kwargs) -> int:
        """Enqueue one run with these arguments; returns the task id."""
        return Bound[P, R](self.spec, {}).enqueue(*args, **kwargs)

    async def aenqueue(self, *args: P.args, **kwargs: P.kwargs) -> int:
        """Enqueue one run without blocking the event loop; returns the task id."""
        return await Bound[P, R](self.spec, {}).aenqueue(*args, **kwargs)

    def options(self, *, conn: Any = None, run_at: datetime | None = None,
                delay: float | timedelta | None = None, priority: int | None = None,
                queue: str | None = None, unique_key: str | None = None,
                max_attempts: int | None = None, timeout: float | None = None) -> Bound[P, R]:
        """Bind enqueue options and return an object whose ``enqueue`` / ``aenqueue``
        take the task's own arguments."""
        given = {k: v for k, v in (("conn", conn), ("run_at", run_at), ("delay", delay),
                                   ("priority", priority), ("queue", queue),
                                   ("unique_key", unique_key), ("max_attempts", max_attempts),
                                   ("timeout", timeout)) if v is not None}
        return Bound(self.spec, given)

    def __repr__(self) -> str:
        return f"<task {self.name}>"


class Bound(Generic[P, R]):
    """A task with enqueue options bound: ``send_email.options(delay=60).enqueue(to)``."""

    def __init__(self, spec: registry.Spec, options: dict[str, Any]) -> None:
        self.spec, self.options = spec, options

    def enqueue(self, *args: P.args, **kwargs: P.kwargs) -> int:
        return enqueue(self.spec.name, self._packed(args, kwargs), **self.options)

    async def aenqueue(self, *args: P.args, **kwargs: P.kwargs) -> int:
        from stagerunner import aio

        return await aio.enqueue(self.spec.name, self._packed(args, kwargs), **self.options)

    def _packed(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        try:
            return arguments.pack(args, kwargs)
        except TypeError as exc:
            raise BadArguments(f"bad arguments for {self.spec.name}: {exc}") from None


@overload
def task(func: Callable[P, R], /) -> TaskFunction[P, R]: ...


@overload
def task(*, name: str | None = None, max_attempts: int | None = None,
         timeout: float | None = None, queue: str = "default", priority: int = 0,
         cron: str | None = None, retry_on: tuple[type[BaseException], ...] = (),
         discard_on: tuple[type[BaseException], ...] = (), backoff: Backoff | None = None
         ) -> Callable[[Callable[P, R]], TaskFunction[P, R]]: ...


def task(func: Callable[..., Any] | None = None, /, *, name: str | None = None,
         max_attempts: int | None = None, timeout: float | None = None,
         queue: str = "default", priority: int = 0, cron: str | None = None,
         retry_on: tuple[type[BaseException], ...] = (),
         discard_on: tuple[type[BaseException], ...] = (),
         backoff: Backoff | None = None) -> Any:
    """Register a function (``def`` or ``async def``) as a task, with or without options.

    The stable name defaults to ``module:function``; pass ``name=`` to keep it stable
    across refactors. ``timeout`` (seconds) must not exceed STAGERUNNER_MAX_JOB_TIMEOUT
    (a node refuses to start otherwise). ``cron`` ("*/5 * * * *", UTC) makes it periodic.
    ``retry_on`` / ``discard_on`` (exception classes) and ``backoff``
    (``stagerunner.Backoff``) shape its retries.
    """

    def decorate(fn: Callable[..., Any]) -> TaskFunction[Any, Any]:
        return TaskFunction(registry.register(
            fn, name=name, max_attempts=max_attempts, timeout=timeout, queue=queue,
            priority=priority, cron=cron, retry_on=retry_on, discard_on=discard_on,
            backoff=backoff))

    return decorate(func) if func is not None else decorate


def enqueue(target: Any, function: Any = None, args: Any = None, /, **options: Any) -> int:
    """Enqueue one task; returns its id.

    ``enqueue("app.tasks:send_email", ["a@b.c"])``, ``enqueue(send_email, {"to": "a@b.c"})``
    or the tutorial's ``enqueue(app.tasks, "send_email", ["a@b.c"])``. Options: conn,
    run_at, delay, priority, queue, unique_key, max_attempts, timeout.
    """
    return enqueue_many([split_target(target, function, args)], **options)[0]


def enqueue_many(items: Iterable[tuple[Any, Any]], /, **options: Any) -> list[int]:
    """Enqueue many (name, args) pairs in one INSERT statement; ids in input order."""
    conn, pairs = check_options(options), list(items)
    if INLINE[0] is not None:
        return INLINE[0].run_many(pairs, options)  # type: ignore[no-any-return]
    from psycopg import Connection

    from stagerunner import connections, store

    if isinstance(conn, Connection):  # the common case, without a context manager's cost
        return store.drive(conn, steps(connections.database_key(conn), pairs, options))  # type: ignore[no-any-return]
    with connections.sync(conn) as c:
        ids: list[int] = store.drive(c, steps(connections.database_key(c), pairs, options))
    return ids


def cancel(ids: Iterable[int], /, *, conn: Any = None) -> dict[int, str]:
    """Cancel tasks: waiting ones end ``cancelled`` at once; running ones are killed by
    their node and end ``cancelled``. Returns {id: status now}; finished tasks are left out."""
    from stagerunner import connections, opstore

    with connections.sync(conn) as c:
        return dict(opstore.cancel_tasks(c, ids=list(ids)))
