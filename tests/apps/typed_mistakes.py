"""Checked by mypy in the test suite (test_typing): every line marked `# error` must be
reported, and nothing else."""

from __future__ import annotations

from tests.apps.typed_example import add, send


async def mistakes() -> None:
    add.enqueue(1, "x")  # error
    add.enqueue(1)  # error
    add.options(delay=5).enqueue(1, c=2)  # error
    add.options(dely=5)  # error
    text: str = add(1, 2)  # error
    await send.aenqueue(42)  # error
    await send.aenqueue("a@b.c", "positional subject")  # error
