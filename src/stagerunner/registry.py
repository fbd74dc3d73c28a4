"""Which callables may run: only functions decorated with ``@stagerunner.task`` in the
modules the operator listed in STAGERUNNER_TASK_MODULES.

A task row names a registered task; ``resolve`` checks that name against this
registry, which was filled by importing the allowed modules once at consumer start.
A row can therefore never make a consumer import anything: ``os:system``,
``builtins:eval`` or a re-exported helper are simply not in the registry.

This module stays lean (no psycopg, no pydantic): consumers import it, and what a
consumer imports is paid on every fork.
"""

from __future__ import annotations

import importlib
import json
import inspect
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from stagerunner import arguments
from stagerunner.errors import BadArguments, StagerunnerError, UnknownTask
from stagerunner.retry import Backoff

Errors = tuple[type[BaseException], ...]

_NAME = re.compile(r"^[A-Za-z_][\w.]*(:[A-Za-z_]\w*)?$")
MAX_ATTEMPTS_DEFAULT = 3


@dataclass(frozen=True, slots=True)
class Spec:
    name: str
    func: Callable[..., Any]
    module: str
    max_attempts: int | None = None
    timeout: float | None = None
    queue: str = "default"
    priority: int = 0
    signature: inspect.Signature | None = field(default=None, compare=False)
    cron: str | None = None
    is_async: bool = False
    retry_on: Errors = ()  # when given, other exceptions are not retried
    discard_on: Errors = ()  # never retried
    backoff: Backoff | None = None


_REGISTRY: dict[str, Spec] = {}


def register(fn: Callable[..., Any], *, name: str | None = None,
             max_attempts: int | None = None, timeout: float | None = None,
             queue: str = "default", priority: int = 0, cron: str | None = None,
             retry_on: Errors = (), discard_on: Errors = (), backoff: Backoff | None = None
             ) -> Spec:
    """Check a task's options and record it under its stable name (``module:function``
    unless `name` is given); what ``@stagerunner.task`` does."""
    _check_callable(fn, name)
    task_name = name or f"{fn.__module__}:{fn.__qualname__}"
    _check_name(task_name)
    if max_attempts is not None and max_attempts < 1:
        raise ValueError(f"max_attempts must be >= 1, got {max_attempts}")
    if timeout is not None and timeout <= 0:
        raise ValueError(f"timeout must be > 0, got {timeout}")
    if timeout is not None:  # timeout=10 next to timeout=0.5: one float column, one array type
        timeout = float(timeout)
    if cron is not None:
        from stagerunner import cron as cron_module

        cron_module.parse(cron)  # a bad expression fails at import, not at the first tick
    for option, classes in (("retry_on", retry_on), ("discard_on", discard_on)):
        if not all(isinstance(c, type) and issubclass(c, BaseException) for c in classes):
            raise TypeError(f"{option} takes a tuple of exception classes, got {classes!r}")
    spec = Spec(task_name, fn, fn.__module__, max_attempts, timeout, queue, priority,
                inspect.signature(fn), cron, inspect.iscoroutinefunction(fn), tuple(retry_on),
                tuple(discard_on), backoff)
    previous = _REGISTRY.get(task_name)
    if previous is not None and previous.func.__qualname__ != fn.__qualname__:
        raise ValueError(f"task name {task_name!r} is already registered by "
                         f"{previous.module}:{previous.func.__qualname__}")
    _REGISTRY[task_name] = spec
    return spec


def _check_callable(fn: Any, name: str | None) -> None:
    """Refuse, at import, what can never run as a task, saying why."""
    if inspect.isasyncgenfunction(fn) or inspect.isgeneratorfunction(fn):
        kind = "an async generator" if inspect.isasyncgenfunction(fn) else "a generator"
        raise TypeError(f"@task cannot run {fn.__qualname__}: it is {kind}, whose values "
                        "are produced lazily and cannot be stored as one JSON result; "
                        "return a list instead")
    if isinstance(fn, (staticmethod, classmethod)):
        raise TypeError("@task decorates module-level functions; put it below @staticmethod "
                        "or @classmethod, or better, on a plain function")
    if not inspect.isfunction(fn):
        raise TypeError(f"@task decorates plain functions (def or async def), not {fn!r}")
    if "<locals>" in fn.__qualname__ and name is None:
        raise TypeError(f"@task cannot run {fn.__qualname__}: a function defined inside "
                        "another has no importable name; give it one with name=")


def _check_name(name: str) -> None:
    if type(name) is str and name in _CHECKED:
        return
    if not isinstance(name, str) or not _NAME.match(name) or "__" in name:
        raise UnknownTask(f"invalid task name {name!r}: expected module:function "
                          "or a dotted name, without dunder parts")
    if any(part.startswith("_") for part in re.split(r"[.:]", name)):
        raise UnknownTask(f"invalid task name {name!r}: private (underscore) names never run")
    if name in _REGISTRY:  # remembered only for registered names: rows cannot grow it
        _CHECKED.add(name)


_CHECKED: set[str] = set()  # names that passed _check_name (every task's row repeats one)


def load(modules: Iterable[str]) -> list[str]:
    """Import the operator's task modules; returns the names registered."""
    for module in modules:
        importlib.import_module(module)
    if any(s.is_async for s in _REGISTRY.values()):
        import asyncio  # noqa: F401  (imported once here, not in every job child)
    return sorted(_REGISTRY)


def over_cap(modules: Iterable[str], cap: float) -> list[Spec]:
    """Tasks of the allowed modules whose own timeout exceeds the node's hard cap."""
    modules = list(modules)
    return [s for s in _REGISTRY.values()
            if s.timeout is not None and s.timeout > cap and _allowed(s.module, modules)]


def specs(modules: Iterable[str]) -> list[Spec]:
    """Every registered task of the allowed modules (the catalog a node publishes)."""
    modules = list(modules)
    return sorted((s for s in _REGISTRY.values() if _allowed(s.module, modules)),
                  key=lambda s: s.name)


def _allowed(module: str, modules: Iterable[str]) -> bool:
    return any(module == m or module.startswith(m + ".") for m in modules)


def resolve(name: str, modules: Iterable[str]) -> Spec:
    """The spec for a row's task name, or UnknownTask saying why it may not run."""
    modules = list(modules)
    _check_name(name)
    spec = _REGISTRY.get(name)
    if spec is None:
        listed = ", ".join(modules) or "nothing"
        raise UnknownTask(f"unknown task {name!r}: no @task of that name in "
                          f"STAGERUNNER_TASK_MODULES ({listed})")
    if not _allowed(spec.module, modules):
        raise UnknownTask(f"task {name!r} is defined in {spec.module}, which is not in "
                          f"STAGERUNNER_TASK_MODULES ({', '.join(modules) or 'nothing'})")
    return spec


def lookup(name: str) -> Spec | None:
    """The spec registered in this process under `name`, if any (used when enqueuing)."""
    return _REGISTRY.get(name)


def periodic(modules: Iterable[str]) -> list[Spec]:
    """Registered tasks with a cron schedule, from the allowed modules."""
    modules = list(modules)
    return [s for s in _REGISTRY.values() if s.cron and _allowed(s.module, modules)]


def resolver(modules: tuple[str, ...]) -> Callable[[str], Spec]:
    """A job child's way from a task name to what it runs (``running.call`` takes a Spec):
    the tasks allowed now, looked up by name (the consumer admitted the row already; a
    child pays for every object it touches), else ``resolve`` saying why not."""
    allowed = {n: s for n, s in _REGISTRY.items() if _allowed(s.module, list(modules))}

    def by_name(name: str) -> Spec:
        return allowed.get(name) or resolve(name, modules)

    return by_name


def check_arguments(spec: Spec, args_text: str) -> None:
    """Refuse arguments that cannot be bound to the task's signature, before forking."""
    try:
        args = json.loads(args_text)
    except (ValueError, RecursionError) as exc:
        raise BadArguments(f"arguments for {spec.name} cannot be decoded: "
                           f"{type(exc).__name__}: {exc}") from None
    check_call(spec, args)


def check_call(spec: Spec, args: Any) -> None:
    """BadArguments unless decoded arguments (a list, an object) bind to the signature."""
    try:
        arguments.check(spec.signature, *arguments.unpack(args))
    except TypeError as exc:
        raise BadArguments(f"bad arguments for {spec.name}: {exc}") from None


def admit(name: str, args_text: str, modules: Iterable[str]) -> tuple[Spec | None, str]:
    """The Spec of the task a row names, if the row may run (its name is registered, its
    arguments fit); else None and why. Never raises: a row must not take a consumer down."""
    try:
        spec = resolve(name, modules)
        check_arguments(spec, args_text)
        return spec, ""
    except StagerunnerError as exc:
        return None, str(exc)
    except Exception as exc:
        return None, f"task refused: {type(exc).__name__}: {exc}"[:2000]
