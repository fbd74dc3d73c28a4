"""What every enqueue path shares (``client`` for sync code, ``aio`` for async code, and
``testing``'s inline mode): the call shapes, the options, and the statements of one
enqueue call as a ``store.Steps`` sequence (the catalog when needed, then the INSERT),
with the arguments checked against the task's signature before anything is written.

Lean at import (``client`` imports it, and task modules import ``client``).
"""

from __future__ import annotations

import json
import types
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from stagerunner import jsontext, registry
from stagerunner.errors import ArgumentsTooLarge, NotJSON

if TYPE_CHECKING:
    from stagerunner import store

OPTIONS = ("conn", "run_at", "delay", "priority", "queue", "unique_key", "max_attempts", "timeout")
ARGS_MAX_BYTES = 1 << 20  # schema.sql: tasks_args_at_most_1_mib
INLINE: list[Any] = [None]  # stagerunner.testing's inline mode, while a test turns it on


def split_target(target: Any, function: Any, args: Any) -> tuple[str, Any]:
    """(name, args) from the three call shapes of ``enqueue``."""
    if args is not None or isinstance(function, str) or callable(function):
        return _name_of(target, function), args
    return _name_of(target, None), function


def check_options(options: dict[str, Any]) -> Any:
    """Refuse unknown options; pop and return ``conn``."""
    unknown = set(options) - set(OPTIONS)
    if unknown:
        raise TypeError(f"unknown enqueue option(s): {', '.join(sorted(unknown))}")
    return options.pop("conn", None)


def steps(key: str, items: list[tuple[Any, Any]], options: dict[str, Any]) -> store.Steps:
    """The statements of one enqueue call: the catalog when a name is not registered
    here (and this process's copy is stale), then the INSERT."""
    from stagerunner import catalog, inserts

    named = [(_name_of(name, None), args) for name, args in items]
    foreign = {name for name, _ in named if registry.lookup(name) is None}
    known = (yield from catalog.entries(key, foreign)) if foreign else {}
    fixed = _when(options)
    made: dict[str, tuple[Any, ...]] = {}  # per task name: its options, worked out once
    rows = []
    for name, args in named:
        if name not in made:
            made[name] = _options(name, options, known)
        spec, queue, priority, max_attempts, timeout = made[name]
        args = [] if args is None else args
        text = to_json(name, args)
        if spec is not None:
            registry.check_call(spec, list(args) if isinstance(args, tuple) else args)
        rows.append(inserts.NewTask(name, text, queue, priority, max_attempts, timeout, *fixed))
    ids = yield from inserts.insert_steps(rows)
    return ids


def _options(name: str, options: dict[str, Any], known: dict[str, Any]) -> tuple[Any, ...]:
    """(spec, queue, priority, max_attempts, timeout): the call's options, else the task's
    own (registered here, or from the catalog), else the defaults."""
    from stagerunner import catalog

    spec = registry.lookup(name)
    own: dict[str, Any]
    if spec is not None:
        own = {"queue": spec.queue, "priority": spec.priority,
               "max_attempts": spec.max_attempts, "timeout_s": spec.timeout}
    else:
        own = catalog.check_known(name, known) or {}
    timeout = options.get("timeout") or own.get("timeout_s")
    return (spec, options.get("queue") or own.get("queue") or "default",
            int(options.get("priority", own.get("priority") or 0)),
            int(options.get("max_attempts") or own.get("max_attempts")
                or registry.MAX_ATTEMPTS_DEFAULT),
            None if timeout is None else float(timeout))  # one type for the timeouts array


def _when(options: dict[str, Any]) -> tuple[Any, Any, Any]:
    """(delay_s, run_at, unique_key), checked once per call."""
    delay = options.get("delay")
    if isinstance(delay, timedelta):
        delay = delay.total_seconds()
    run_at = options.get("run_at")
    if run_at is not None and not isinstance(run_at, datetime):
        raise TypeError(f"run_at must be a datetime, got {type(run_at).__name__}")
    return delay, run_at, options.get("unique_key")


def to_json(name: str, args: Any) -> str:
    """Task arguments as JSON text, or NotJSON saying which value is not JSON."""
    if isinstance(args, tuple):
        args = list(args)
    if not isinstance(args, (list, dict)):
        raise NotJSON(f"arguments for {name} must be a list (positional) or an object "
                      f"(keyword arguments), got {type(args).__name__}")
    try:
        text = _encode(args)
        if len(text) > ARGS_MAX_BYTES:  # ours escapes non-ASCII: count as PostgreSQL does
            _check_size(name, args)
        return text
    except (TypeError, ValueError) as exc:
        raise NotJSON(f"arguments for {name} are not JSON: {exc}") from None
    except RecursionError:
        raise NotJSON(f"arguments for {name} are not JSON: nested too deeply, or they "
                      "contain themselves") from None


def _check_size(name: str, args: Any) -> None:
    size = len(json.dumps(args, ensure_ascii=False).encode())
    if size > ARGS_MAX_BYTES:
        raise ArgumentsTooLarge(f"arguments for {name} are too large: {size} bytes of JSON, "
                                f"limit {ARGS_MAX_BYTES}")


def _refuse(value: Any) -> Any:
    raise TypeError(f"{type(value).__name__} value {value!r:.60} is not JSON")


_ENCODER = json.JSONEncoder(allow_nan=False, default=_refuse)


_encode = jsontext.c_encoder(_ENCODER)  # built once (a bulk enqueue: ~0.7 of ~4 µs a task)


def _name_of(target: Any, function: Any) -> str:
    if function is None and isinstance(target, str):  # by name: the common case, first
        return target
    for candidate in (function, target):
        if isinstance(getattr(candidate, "spec", None), registry.Spec):  # a TaskFunction
            return str(candidate.name)
    if function is None:
        if isinstance(target, str):
            return target
        if callable(target):
            return f"{target.__module__}:{target.__qualname__}"
        raise TypeError(f"cannot enqueue {target!r}: pass a task, a name or module and function")
    module = target.__name__ if isinstance(target, types.ModuleType) else str(target)
    func = function.__name__ if callable(function) else str(function)
    return f"{module}:{func}"
