"""Inside a job child: calling the task (a plain or an ``async def`` function), its
context (``stagerunner.current()``) and logging, its success and failure hooks, and what
its exception means for the next attempt (``retry.classify``).

``child.child_main`` and ``child.run_job`` call this; the consumer's end of the
child (deadline, kill, outcome) stays in ``executor``. An async task runs on a fresh
event loop (``asyncio.run``) in the child, under the same hard deadline: the consumer
kills the child's group whatever the loop is doing.

Stdlib only, and asyncio only for async tasks (``registry.load`` imports it once in
the consumer when a task module has one, so children do not pay for it).
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from types import CoroutineType
from typing import Any

from stagerunner import context, hooks, logs, retry


def prepare() -> None:
    """Once per child: records of any logger reach the node's log with the job's fields."""
    logs.route_job_logs()


OK_NONE = ["ok", "null"]  # the reply of a task that returned None (never mutated)


def enter(job: list[Any]) -> None:
    """A job starts: its context and the fields its log records carry."""
    context.enter(job, time.time())
    logs.job_fields(task_id=job[0], attempt=job[3])


def leave() -> None:
    """The job is over: every log handler flushed, context cleared."""
    for handler in [*logging.getLogger().handlers, *logging.getLogger("stagerunner").handlers]:
        try:
            handler.flush()
        except Exception:  # a broken handler must not cost the result
            pass
    logs.job_fields()
    context.leave()


def call(target: Any, args: list[Any], kwargs: dict[str, Any]) -> Any:
    """Call the task (a registry.Spec, or a bare function); await it if it is async."""
    func: Callable[..., Any] = getattr(target, "func", target)
    value = func(*args, **kwargs)
    if isinstance(value, CoroutineType):
        import asyncio

        value = asyncio.run(value)
    return value


def failed(target: Any, exc: BaseException, error: str) -> list[Any]:
    """The reply for a task that raised: ["error", text] plus what its task's retry rules
    say about it ({"retry": false} or {"snooze": seconds})."""
    verdict = retry.classify(exc, getattr(target, "retry_on", ()), getattr(target, "discard_on", ()))
    if isinstance(exc, retry.Snooze):
        return ["error", str(exc), verdict]
    _hook("failure", exc, error)
    return ["error", error, verdict] if verdict else ["error", error]


def finished(value: Any, max_bytes: int) -> list[Any]:
    """The reply for a task that returned: ["ok", JSON text], or ["error", why] for a
    result that cannot be stored; then the success or the failure hook."""
    reply = _result(value, max_bytes)
    if reply[0] == "ok":
        _hook("success", value)
    else:
        _hook("failure", None, reply[1])
    return reply


def _result(value: Any, max_bytes: int) -> list[Any]:
    if value is None:  # most tasks: no encoder built in the child for it
        return OK_NONE
    try:
        text = json.dumps(value, allow_nan=False)
    except (TypeError, ValueError) as exc:
        return ["error", f"result is not JSON-encodable: {exc}"]
    if "\\u0000" in text:  # valid JSON, but PostgreSQL's jsonb cannot store it
        return ["error", "result is not storable: it contains a NUL character (\\u0000)"]
    if len(text) > max_bytes:
        return ["error", f"result too large: {len(text)} bytes of JSON, limit {max_bytes}"]
    return ["ok", text]


def _hook(kind: str, *args: Any) -> None:
    if hooks.registered(kind) and context.active():
        hooks.call(kind, context.current(), *args)
