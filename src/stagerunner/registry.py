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

from stagerunner.errors import BadArguments, UnknownTask

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


_REGISTRY: dict[str, Spec] = {}


def register(fn: Callable[..., Any], *, name: str | None = None,
             max_attempts: int | None = None, timeout: float | None = None,
             queue: str = "default", priority: int = 0, cron: str | None = None) -> Spec:
    """Check a task's options and record it under its stable name (``module:function``
    unless `name` is given); what ``@stagerunner.task`` does."""
    if not inspect.isfunction(fn):
        raise TypeError(f"@task decorates plain functions, not {fn!r}")
    task_name = name or f"{fn.__module__}:{fn.__qualname__}"
    _check_name(task_name)
    if max_attempts is not None and max_attempts < 1:
        raise ValueError(f"max_attempts must be >= 1, got {max_attempts}")
    if timeout is not None and timeout <= 0:
        raise ValueError(f"timeout must be > 0, got {timeout}")
    if cron is not None:
        from stagerunner import cron as cron_module

        cron_module.parse(cron)  # a bad expression fails at import, not at the first tick
    spec = Spec(task_name, fn, fn.__module__, max_attempts, timeout, queue, priority,
                inspect.signature(fn), cron)
    previous = _REGISTRY.get(task_name)
    if previous is not None and previous.func.__qualname__ != fn.__qualname__:
        raise ValueError(f"task name {task_name!r} is already registered by "
                         f"{previous.module}:{previous.func.__qualname__}")
    _REGISTRY[task_name] = spec
    return spec


def _check_name(name: str) -> None:
    if not isinstance(name, str) or not _NAME.match(name) or "__" in name:
        raise UnknownTask(f"invalid task name {name!r}: expected module:function "
                          "or a dotted name, without dunder parts")
    if any(part.startswith("_") for part in re.split(r"[.:]", name)):
        raise UnknownTask(f"invalid task name {name!r}: private (underscore) names never run")


def load(modules: Iterable[str]) -> list[str]:
    """Import the operator's task modules; returns the names registered."""
    for module in modules:
        importlib.import_module(module)
    return sorted(_REGISTRY)


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


def resolver(modules: tuple[str, ...]) -> Callable[[str], Callable[..., Any]]:
    """A job child's way from a task name to the function it runs."""
    def by_name(name: str) -> Any:
        return resolve(name, modules).func

    return by_name


def check_arguments(spec: Spec, args_text: str) -> None:
    """Refuse arguments that cannot be bound to the task's signature, before forking."""
    try:
        args = json.loads(args_text)
    except (ValueError, RecursionError) as exc:
        raise BadArguments(f"arguments for {spec.name} cannot be decoded: "
                           f"{type(exc).__name__}: {exc}") from None
    if spec.signature is None:
        return
    try:
        if isinstance(args, list):
            spec.signature.bind(*args)
        elif isinstance(args, dict):
            spec.signature.bind(**args)
        else:
            raise TypeError(f"expected a JSON array or object, got {type(args).__name__}")
    except TypeError as exc:
        raise BadArguments(f"bad arguments for {spec.name}: {exc}") from None
