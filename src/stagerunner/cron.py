"""Cron expressions (pure): five fields, minute hour day-of-month month day-of-week, each
``*``, ``*/n``, ``a``, ``a-b``, ``a-b/n`` or a comma list of those; day-of-week 0-7 (0 and 7
are Sunday). As in cron, when both day fields are restricted a day matching either runs.
Times are UTC.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta, timezone

_RANGES = ((0, 59), (0, 23), (1, 31), (1, 12), (0, 7))
_MONTH_DAYS = (31, 29, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31)  # February in a leap year
HORIZON_DAYS = 366 * 30  # the rarest valid expression (29 February) fires every 4 years
_NAMES = ("minute", "hour", "day of month", "month", "day of week")
_ALIASES = {"@hourly": "0 * * * *", "@daily": "0 0 * * *", "@weekly": "0 0 * * 0",
            "@monthly": "0 0 1 * *", "@yearly": "0 0 1 1 *"}


@dataclass(frozen=True)
class Cron:
    expr: str
    minutes: frozenset[int]
    hours: frozenset[int]
    days: frozenset[int]
    months: frozenset[int]
    weekdays: frozenset[int]
    any_day: bool
    any_weekday: bool

    def matches(self, t: datetime) -> bool:
        if t.minute not in self.minutes or t.hour not in self.hours or t.month not in self.months:
            return False
        day_ok = t.day in self.days
        weekday_ok = (t.isoweekday() % 7) in self.weekdays
        if self.any_day or self.any_weekday:
            return day_ok and weekday_ok
        return day_ok or weekday_ok

    def next_after(self, t: datetime) -> datetime:
        """The first matching minute strictly after `t` (UTC)."""
        t = t.astimezone(timezone.utc).replace(second=0, microsecond=0) + timedelta(minutes=1)
        horizon = t + timedelta(days=HORIZON_DAYS)
        while t < horizon:
            if t.month not in self.months:
                t = (t.replace(day=1, hour=0, minute=0) + timedelta(days=32)).replace(day=1)
            elif not self._day_ok(t):
                t = t.replace(hour=0, minute=0) + timedelta(days=1)
            elif t.hour not in self.hours:
                t = t.replace(minute=0) + timedelta(hours=1)
            elif t.minute not in self.minutes:
                t += timedelta(minutes=1)
            else:
                return t
        raise ValueError(f"cron {self.expr!r} never matches")

    def last_at_or_before(self, t: datetime) -> datetime | None:
        """The latest matching minute at or before `t`, looking back at most one day."""
        t = t.astimezone(timezone.utc).replace(second=0, microsecond=0)
        for _ in range(24 * 60):
            if self.matches(t):
                return t
            t -= timedelta(minutes=1)
        return None

    def _day_ok(self, t: datetime) -> bool:
        return self.matches(t.replace(hour=min(self.hours), minute=min(self.minutes)))


def parse(expr: str) -> Cron:
    fields = _ALIASES.get(expr.strip(), expr).split()
    if len(fields) != 5:
        raise ValueError(f"cron {expr!r}: expected 5 fields (minute hour day month weekday)")
    sets = [_field(f, lo, hi, name, expr) for f, (lo, hi), name in zip(fields, _RANGES, _NAMES)]
    weekdays = frozenset(d % 7 for d in sets[4])
    any_day, any_weekday = fields[2] == "*", fields[4] == "*"
    # Restricted days with an unrestricted weekday must name a day some month has; with
    # both restricted either one matching is enough, and every weekday comes round.
    if not any_day and any_weekday and not any(d <= _MONTH_DAYS[m - 1]
                                                for m in sets[3] for d in sets[2]):
        raise ValueError(f"cron {expr!r} can never fire: none of its months has day "
                         f"{', '.join(map(str, sorted(sets[2])))}")
    return Cron(expr, sets[0], sets[1], sets[2], sets[3], weekdays, any_day, any_weekday)


def _field(text: str, lo: int, hi: int, name: str, expr: str) -> frozenset[int]:
    values: set[int] = set()
    for part in text.split(","):
        base, _, step_text = part.partition("/")
        try:
            step = int(step_text) if step_text else 1
            if base == "*":
                start, end = lo, hi
            elif "-" in base:
                start, end = (int(x) for x in base.split("-", 1))
            else:
                start = int(base)
                end = hi if step_text else start
        except ValueError:
            raise ValueError(f"cron {expr!r}: bad {name} field {text!r}") from None
        if step < 1 or not lo <= start <= end <= hi:
            raise ValueError(f"cron {expr!r}: {name} field {text!r} is outside {lo}-{hi}")
        values.update(range(start, end + 1, step))
    return frozenset(values)
