"""The job context: what a running job may know about itself (``stagerunner.current()``).

Set in the job child for the length of one job; stdlib only, as everything a job child
imports.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any


@dataclass(frozen=True, slots=True)
class JobContext:
    """The task being run: its id (the key for idempotency under at-least-once), this
    attempt and how many are allowed, its queue and name, when it was enqueued, the
    deadline at which its process group is killed, and when this run started (UTC)."""

    id: int
    name: str
    attempt: int
    max_attempts: int
    queue: str
    enqueued_at: datetime | None
    deadline: datetime | None
    started_at: datetime | None = None  # when this run started (in the job child)

    @classmethod
    def from_job(cls, job: list[object], started: float) -> JobContext:
        """From the job pipe's message: [id, name, args, attempt, max_attempts, queue,
        enqueued_at, deadline] (times as epoch seconds), started at `started` (epoch)."""
        id_, name, _args, attempt, max_attempts, queue, enqueued, deadline = (
            [*job, None, None, None, None, None][:8])
        return cls(int(id_), str(name), int(attempt or 0), int(max_attempts or 1),  # type: ignore[call-overload]
                   str(queue or "default"), _utc(enqueued), _utc(deadline),
                   _utc(started))

    @classmethod
    def from_task(cls, task: Any) -> JobContext:
        """From a protocol.Task (in the consumer or the producer: no deadline known)."""
        return cls(task.id, task.name, task.attempt, task.max_attempts, task.queue,
                   _utc(task.enqueued_at), None)


# A job child's running job, as the job message and its start (epoch seconds) until a
# job asks for its context: most never do, and building it (three datetimes) in every
# child would write, and so copy, pages shared with the fork helper.
_current: list[JobContext | tuple[list[object], float]] = []


def _utc(epoch: object) -> datetime | None:
    if isinstance(epoch, (int, float)):
        return datetime.fromtimestamp(epoch, timezone.utc)
    return None


def current() -> JobContext:
    """The running job's context; RuntimeError outside a job."""
    if not _current:
        raise RuntimeError("stagerunner.current() is only available inside a running job")
    top = _current[-1]
    if not isinstance(top, JobContext):
        top = _current[-1] = JobContext.from_job(*top)
    return top


def active() -> bool:
    """Is a job running in this process?"""
    return bool(_current)


def enter(job: list[object], started: float) -> None:
    """A job starts: the job pipe's message, and when (epoch seconds)."""
    _current.append((job, started))


def leave() -> None:
    if _current:
        _current.pop()
