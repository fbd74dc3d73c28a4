"""How values look on the dashboard (pure; registered as Jinja filters).

Everything a task wrote (names, arguments, results, errors) is escaped by the templates'
autoescape; ``visible`` additionally shows control and bidirectional-override characters as
escapes, so a payload cannot hide text or reorder what the operator reads.
"""

from __future__ import annotations

import json
import re
from datetime import datetime, timezone
from typing import Any

# C0 controls except tab and newline, DEL, C1 controls, and the bidi overrides and isolates
_HIDDEN = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\u200e\u200f\u202a-\u202e\u2066-\u2069]")
BIG = 65_536  # characters of one value shown on a page; the rest is cut, with a note


def visible(value: Any) -> str:
    text = "" if value is None else str(value)
    return _HIDDEN.sub(lambda m: f"\\u{ord(m.group()):04x}" if ord(m.group()) > 0xFF
                       else f"\\x{ord(m.group()):02x}", text)


def cut(value: Any, limit: int = BIG) -> str:
    """At most `limit` characters, ending with how much was cut."""
    text = visible(value)
    if len(text) <= limit:
        return text
    return f"{text[:limit]}… ({len(text) - limit:,} more characters not shown)"


def pretty_json(value: Any) -> str:
    if value is None:
        return "null"
    return json.dumps(value, indent=2, ensure_ascii=False, sort_keys=False)


def compact_json(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False)


def last_line(text: str | None) -> str:
    """The line that says what went wrong: a traceback's last non-empty line."""
    for line in reversed((text or "").splitlines()):
        if line.strip():
            return line.strip()
    return ""


def when(moment: datetime | None) -> str:
    if moment is None:
        return "—"
    return moment.astimezone(timezone.utc).strftime("%Y-%m-%d %H:%M:%SZ")


def ago(moment: datetime | None, now: datetime | None = None) -> str:
    if moment is None:
        return "—"
    seconds = ((now or datetime.now(timezone.utc)) - moment).total_seconds()
    return f"{age(abs(seconds))} {'ago' if seconds >= 0 else 'from now'}"


def age(seconds: float | None) -> str:
    """3.2s, 4m 10s, 2h 05m, 3d 4h."""
    if seconds is None:
        return "—"
    s = float(seconds)
    if s < 60:
        return f"{s:.1f}s"
    if s < 3600:
        return f"{int(s // 60)}m {int(s % 60):02d}s"
    if s < 86400:
        return f"{int(s // 3600)}h {int(s % 3600 // 60):02d}m"
    return f"{int(s // 86400)}d {int(s % 86400 // 3600)}h"


def ms(value: float | None) -> str:
    if value is None:
        return "—"
    v = float(value)
    if abs(v) < 10:
        return f"{v:.2f} ms"
    if abs(v) < 1000:
        return f"{v:.0f} ms"
    return f"{v / 1000:.2f} s"


def number(value: Any) -> str:
    return "—" if value is None else f"{value:,}"


def percent(part: float, whole: float) -> str:
    return "—" if not whole else f"{100.0 * part / whole:.1f}%"


FILTERS = {"visible": visible, "cut": cut, "pretty_json": pretty_json, "compact_json": compact_json,
           "last_line": last_line,
           "when": when, "ago": ago, "age": age, "ms": ms, "number": number}
