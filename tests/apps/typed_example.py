"""Checked by mypy in the test suite (test_typing): how typed task code reads."""

from __future__ import annotations

import stagerunner


@stagerunner.task
def add(a: int, b: int) -> int:
    return a + b


@stagerunner.task(queue="mail", max_attempts=5)
async def send(to: str, *, subject: str = "") -> bool:
    return bool(to and subject is not None)


def enqueue_some() -> list[int]:
    total: int = add(1, 2)  # still callable directly, with its own return type
    first: int = add.enqueue(1, 2)
    second = add.options(delay=5, priority=1).enqueue(1, b=total)
    return [first, second]


async def enqueue_async() -> int:
    sent: bool = await send("a@example.com", subject="hi")
    assert sent
    return await send.aenqueue("a@example.com", subject="hi")
