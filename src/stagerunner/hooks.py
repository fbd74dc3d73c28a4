"""Callbacks that task modules register for what happens to their tasks.

    @stagerunner.hooks.on_failure
    def report(ctx, exc, error): ...

Each is called where it can run:

| hook | where | arguments |
|---|---|---|
| ``on_success`` | the job child, after the result was checked | ``(ctx, result)`` |
| ``on_failure`` | the job child, when the task raised or returned a bad result | ``(ctx, exc or None, error text)`` |
| ``on_timeout`` | the consumer, once the job's group was killed at its deadline, or its reply came stamped past it | ``(ctx,)`` |
| ``on_lost`` | the producer, when a run was lost with its consumer | ``(ctx,)`` |

``ctx`` is a ``stagerunner.JobContext``. A hook that raises is logged
(``hook.failed``) and changes nothing. Hooks in the child run inside the job's deadline;
hooks in the consumer and the producer hold up that stage while they run, so keep them
short (hand slow work to a task). The producer imports the task modules only when some
module registered ``on_lost``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any, TypeVar

log = logging.getLogger(__name__)
F = TypeVar("F", bound=Callable[..., Any])
KINDS = ("success", "failure", "timeout", "lost")
_HOOKS: dict[str, list[Callable[..., Any]]] = {kind: [] for kind in KINDS}


def _register(kind: str) -> Callable[[F], F]:
    def register(fn: F) -> F:
        if fn not in _HOOKS[kind]:
            _HOOKS[kind].append(fn)
        return fn

    return register


on_success = _register("success")
on_failure = _register("failure")
on_timeout = _register("timeout")
on_lost = _register("lost")


def registered(kind: str) -> bool:
    return bool(_HOOKS[kind])


def call(kind: str, *args: Any) -> None:
    """Run every hook of `kind`; a failing hook is logged and never propagates."""
    for fn in _HOOKS[kind]:
        try:
            fn(*args)
        except Exception as exc:
            log.error("hook raised", extra={
                "event": "hook.failed", "hook": kind,
                "function": getattr(fn, "__qualname__", repr(fn)),
                "error": f"{type(exc).__name__}: {exc}"[:500]})
