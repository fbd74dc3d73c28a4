"""How a task's arguments are stored, and checked against its signature.

A row's ``args`` is a JSON array (positional arguments), a JSON object (keyword
arguments), or, for both at once, an object whose reserved key ``"*args"`` holds the
positional ones: ``f(1, 2, mode="x")`` is stored as ``{"*args": [1, 2], "mode": "x"}``.
``*args`` can never be the name of a keyword argument a Python signature declares, and
rows written before it existed (an array, or an object without the key) read the same.

Stdlib only: the consumer and every job child use it.
"""

from __future__ import annotations

import inspect
from typing import Any

POSITIONAL_KEY = "*args"


def pack(args: tuple[Any, ...] | list[Any], kwargs: dict[str, Any]) -> list[Any] | dict[str, Any]:
    """The stored shape of a call: an array, an object, or an object with ``*args``."""
    if not kwargs:
        return list(args)
    if POSITIONAL_KEY in kwargs:
        raise TypeError(f"{POSITIONAL_KEY!r} is reserved and cannot be a keyword argument")
    return {POSITIONAL_KEY: list(args), **kwargs} if args else dict(kwargs)


def unpack(value: Any) -> tuple[list[Any], dict[str, Any]]:
    """(positional, keyword) from a stored value; TypeError for anything else."""
    if isinstance(value, list):
        return value, {}
    if not isinstance(value, dict):
        raise TypeError(f"expected a JSON array or object, got {type(value).__name__}")
    if POSITIONAL_KEY not in value:
        return [], value
    kwargs = dict(value)
    args = kwargs.pop(POSITIONAL_KEY)
    if not isinstance(args, list):
        raise TypeError(f"{POSITIONAL_KEY!r} must hold a JSON array, got {type(args).__name__}")
    return args, kwargs


_BOUND: dict[tuple[int, int, tuple[str, ...]], inspect.Signature] = {}  # shapes that bind
_BOUND_MAX = 256  # hostile rows can make any number of shapes: past this, bind each time


def check(signature: inspect.Signature | None, args: list[Any], kwargs: dict[str, Any]) -> None:
    """TypeError (saying which argument) unless the call binds to the signature. Whether it
    binds depends on the number of positional arguments and the keyword names, never on
    the values, so a shape that bound once is not bound again (~3 µs each; the rows of a
    bulk enqueue or of a queue mostly share one). The signature is kept with its shape,
    so its id is never reused under it."""
    if signature is None:
        return
    shape = (id(signature), len(args), tuple(kwargs))
    if shape not in _BOUND:
        signature.bind(*args, **kwargs)
        if len(_BOUND) < _BOUND_MAX:
            _BOUND[shape] = signature
