"""What the dashboard's buttons do: each one calls the runner's own transition in ``store``
(the same ones the CLI uses), and returns a flash message code and a count. Who may press
them is decided before (``guard``, ``app``).
"""

from __future__ import annotations

from dataclasses import dataclass

from stagerunner import opstore
from stagerunner.config import parse_duration
from stagerunner.web import filters, views
from stagerunner.web.queries import Conn

RETRY_BATCH = 1000
RETRY_CAP = 100_000  # "retry all matching" retries at most this many per press
PURGE_BATCH = 1000
PURGE_CAP = 1_000_000

# The flash shown after an action: code -> message ({n} is the count). Nothing a request or
# a task wrote is ever part of one.
MESSAGES = {
    "retried": "{n} task(s) sent back to waiting.",
    "not_retried": "Nothing to retry: only tasks in error, timeout or cancelled can be retried.",
    "cancelled": "Task cancelled.",
    "cancel_requested": "Cancel requested: its node kills the running job and marks it cancelled.",
    "not_cancelled": "Nothing to cancel: only waiting or running tasks can be cancelled.",
    "paused": "Queue paused on every node; running jobs finish.",
    "resumed": "Queue resumed.",
    "purged": "{n} finished task(s) deleted.",
    "bad_age": "Purge needs an age such as 30m, 12h or 7d.",
    "signed_out": "Signed out.",
}


@dataclass(frozen=True, slots=True)
class Done:
    code: str
    n: int = 0

    def message(self) -> str:
        return MESSAGES[self.code].format(n=f"{self.n:,}")


def retry(conn: Conn, task_id: int) -> Done:
    ids, _held = opstore.retry_tasks(conn, ids=[task_id])
    return Done("retried", len(ids)) if ids else Done("not_retried")


def cancel(conn: Conn, task_id: int) -> Done:
    changed = dict(opstore.cancel_tasks(conn, ids=[task_id]))
    if task_id not in changed:
        return Done("not_cancelled")
    return Done("cancelled" if changed[task_id] == "cancelled" else "cancel_requested")


def pause(conn: Conn, queue: str, *, paused: bool) -> Done:
    opstore.pause_queue(conn, queue=queue, paused=paused)
    return Done("paused" if paused else "resumed")


def purge(conn: Conn, older_than: str) -> Done:
    try:
        older_s = parse_duration(older_than)
    except ValueError:
        return Done("bad_age")
    deleted = 0
    while deleted < PURGE_CAP and (n := opstore.purge_tasks(conn, older_s=older_s, batch=PURGE_BATCH)):
        deleted += n
    return Done("purged", deleted)


def retry_matching(conn: Conn, args: dict[str, str]) -> Done:
    """Every error/timeout task the filter matches (on every page) back to waiting."""
    f = filters.parse(args)
    ids = views.matching_failed_ids(conn, f, batch=RETRY_BATCH, cap=RETRY_CAP)
    retried = 0
    for start in range(0, len(ids), RETRY_BATCH):
        retried += len(opstore.retry_tasks(conn, ids=ids[start:start + RETRY_BATCH])[0])
    return Done("retried", retried) if retried else Done("not_retried")
