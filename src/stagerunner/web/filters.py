"""The task list's filters and keyset windows (pure: parsing and arithmetic, no I/O).

A page of tasks is the newest rows matching the filters below a cursor, read one window of
ids ``[floor, top)`` at a time: ``SCAN_IDS`` ids per statement, or ``TEXT_SCAN_IDS`` when
searching text (matching jsonb-as-text and tracebacks costs ~3 µs a row; a structured filter
~1 µs). So no statement reads more than a window, whatever the filter's selectivity, and a
page stops before ``PAGE_BUDGET_S``; a short page is not the end: "older" continues from where
it stopped, down to the lowest id (or the ``since`` bound). bin/bench measures the pages.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from datetime import datetime, timedelta, timezone
from urllib.parse import urlencode

STATUSES = ("waiting", "running", "success", "error", "timeout", "cancelled")
FAILED = ("error", "timeout")  # the statuses `retry --failed` and "retry matching" act on
# "failed" in the status picker means both failed statuses
STATUS_CHOICES = {**{s: (s,) for s in STATUSES}, "failed": FAILED}
PAGE_SIZE = 50
SCAN_IDS = 50_000
TEXT_SCAN_IDS = 5_000
# A page reads window after window until it is full, reaches the end, or another window
# would take it past this; then it offers "older" from where it stopped.
PAGE_BUDGET_S = 0.08
# created_at is the enqueuing transaction's start, so ids follow it only roughly: a time
# bound is widened by this much when it is turned into an id bound (then applied exactly).
TIME_MARGIN = timedelta(minutes=5)
MAX_TEXT = 200  # longer filter values are cut, not refused


class BadFilter(ValueError):
    """A filter value that cannot be used (the page says which)."""


@dataclass(frozen=True, slots=True)
class TaskFilter:
    status: str | None = None  # a key of STATUS_CHOICES
    queue: str | None = None
    name: str | None = None  # substring, case-insensitive
    text: str | None = None  # substring of the arguments or the last error
    since: datetime | None = None  # enqueued at or after (UTC)
    until: datetime | None = None  # enqueued before (UTC)
    before: int | None = None  # keyset cursor: ids below this one

    @property
    def statuses(self) -> tuple[str, ...] | None:
        return STATUS_CHOICES[self.status] if self.status else None

    def scan_ids(self) -> int:
        return TEXT_SCAN_IDS if self.text else SCAN_IDS

    def query(self, **changes: object) -> str:
        """The URL query string of this filter (with changes), for links and forms."""
        current = replace(self, **changes)  # type: ignore[arg-type]
        pairs = [(k, v) for k, v in (
            ("status", current.status), ("queue", current.queue), ("name", current.name),
            ("q", current.text), ("since", _stamp(current.since)), ("until", _stamp(current.until)),
            ("before", current.before)) if v not in (None, "")]
        return urlencode(pairs)


def parse(args: dict[str, str]) -> TaskFilter:
    """A TaskFilter from the query string's values; BadFilter names what is wrong."""
    status = _clean(args.get("status"))
    if status is not None and status not in STATUS_CHOICES:
        raise BadFilter(f"unknown status {status!r}")
    before = _clean(args.get("before"))
    if before is not None and not before.isdigit():
        raise BadFilter(f"'before' must be a task id, not {before!r}")
    return TaskFilter(status=status, queue=_clean(args.get("queue")), name=_clean(args.get("name")),
                      text=_clean(args.get("q")), since=_time(args.get("since"), "since"),
                      until=_time(args.get("until"), "until"),
                      before=int(before) if before is not None else None)


def _clean(value: str | None) -> str | None:
    if value is None:
        return None
    value = value.strip()[:MAX_TEXT]
    return value or None


def _time(value: str | None, what: str) -> datetime | None:
    """ISO 8601 (the browser's datetime-local gives 2024-05-01T13:45); naive means UTC."""
    text = _clean(value)
    if text is None:
        return None
    try:
        moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise BadFilter(f"{what!r} must be a date and time such as 2024-05-01T13:45, not {text!r}") from None
    return moment.replace(tzinfo=timezone.utc) if moment.tzinfo is None else moment.astimezone(timezone.utc)


def _stamp(moment: datetime | None) -> str | None:
    return moment.strftime("%Y-%m-%dT%H:%M") if moment else None


def like(text: str | None) -> str | None:
    """A substring pattern for ILIKE, with the user's own % _ and \\ taken literally."""
    if text is None:
        return None
    escaped = text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return f"%{escaped}%"


@dataclass(frozen=True, slots=True)
class Window:
    top: int  # ids below this one
    floor: int  # ... and at or above this one
    lowest: int  # the lowest id this filter can reach: the end of "older"
    scan: int  # ids one window spans

    @property
    def exhausted(self) -> bool:
        return self.floor <= self.lowest

    def older(self) -> Window | None:
        """The next window down, or None past the lowest id."""
        if self.exhausted:
            return None
        return Window(self.floor, max(self.lowest, self.floor - self.scan), self.lowest, self.scan)


def window(f: TaskFilter, *, lo: int | None, hi: int | None, since_id: int | None,
           until_id: int | None) -> Window | None:
    """The id range one page reads, or None when nothing can match.

    lo/hi: the table's lowest and highest ids. since_id/until_id: the first id enqueued at
    or after since - TIME_MARGIN / until + TIME_MARGIN (web_id_at), when those are set.
    """
    if lo is None or hi is None:
        return None
    top = hi + 1
    if f.before is not None:
        top = min(top, f.before)
    if until_id is not None:
        top = min(top, until_id)
    lowest = max(lo, since_id) if since_id is not None else lo
    if top <= lowest:
        return None
    scan = f.scan_ids()
    return Window(top=top, floor=max(lowest, top - scan), lowest=lowest, scan=scan)


def time_bounds(f: TaskFilter) -> tuple[datetime | None, datetime | None]:
    """The widened times whose first ids bound the window (see TIME_MARGIN)."""
    return (f.since - TIME_MARGIN if f.since else None,
            f.until + TIME_MARGIN if f.until else None)
