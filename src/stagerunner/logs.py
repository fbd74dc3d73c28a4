"""One log line format for every stage: role, pid and node on every record, the
variables in ``extra`` (with a stable ``event`` key), and DSN passwords redacted from
whatever reaches the handler. Text for people, JSON lines for machines.

Stays lean (stdlib only): consumers configure logging too.
"""

from __future__ import annotations

import json
import logging
import re
import sys
import time
from typing import Any

_STANDARD = set(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {"message", "asctime"}
# A URL's password runs to its last '@': within the URL (up to a space or a quote), so that
# an unencoded '/' in it is masked too; and before its path, so that a space in it is.
# A DSN that does not parse costs a little more of the line masked.
_SECRETS = [
    (re.compile(r"(\b[a-z][a-z0-9+.-]*://[^:/@\s\"']*:)[^\s\"']*@", re.I), r"\1***@"),
    (re.compile(r"(\b[a-z][a-z0-9+.-]*://[^:/@\s]*:)[^/]*@", re.I), r"\1***@"),
    (re.compile(r"(password\s*=\s*)('(?:[^'\\]|\\.)*'?|\S+)", re.I), r"\1***"),
]


def redact(text: str) -> str:
    # Each pattern needs its literal ("://", "password"): a line with neither is returned
    # as it is, ~10x faster than running the patterns (a node logs a line per task).
    if "://" not in text and "password" not in text.casefold():
        return text
    for pattern, replacement in _SECRETS:
        text = pattern.sub(replacement, text)
    return text


def _extras(record: logging.LogRecord) -> dict[str, Any]:
    return {k: v for k, v in vars(record).items() if k not in _STANDARD and not k.startswith("_")}


_last_second: tuple[int, str] = (-1, "")  # the last whole second formatted, and its text


def _timestamp(record: logging.LogRecord) -> str:
    global _last_second
    second = int(record.created)
    cached = _last_second  # read once: another thread may replace it
    if cached[0] != second:
        cached = _last_second = (second, time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second)))
    return f"{cached[1]}.{int(record.msecs):03d}Z"


class TextFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        fields = " ".join(f"{k}={_short(v)}" for k, v in _extras(record).items())
        line = (f"{_timestamp(record)} {record.levelname:<7} {record.name}[{record.process}] "
                f"{record.getMessage()}" + (f" {fields}" if fields else ""))
        if record.exc_info:
            line += "\n" + self.formatException(record.exc_info)
        return redact(line)


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        doc: dict[str, Any] = {
            "ts": _timestamp(record),
            "level": record.levelname.lower(),
            "logger": record.name,
            "pid": record.process,
            "msg": record.getMessage(),
            **_extras(record),
        }
        if record.exc_info:
            doc["exc"] = self.formatException(record.exc_info)
        return redact(json.dumps(doc, default=str))


def _short(value: Any) -> str:
    text = str(value)
    if " " in text or not text or not text.isprintable():  # quoted, its controls escaped
        text = json.dumps(text)
    return text if len(text) <= 300 else text[:297] + "..."


# What a terminal may act on: C0 and C1 controls (ESC, CSI, BEL, CR, backspace, ...), DEL,
# and the bidirectional overrides that reorder what is shown.
_TERMINAL_CONTROLS = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069]")


def printable(text: str) -> str:
    """`text` (from the database: any role may have written it) as one line safe to print
    to a terminal: each control character escaped (``\\x1b``, a newline ``\\n``), tabs
    kept."""
    text = text.replace("\n", "\\n")
    if text.isascii() and text.isprintable():
        return text
    return _TERMINAL_CONTROLS.sub(lambda m: f"\\x{ord(m[0]):02x}" if ord(m[0]) < 256
                                  else f"\\u{ord(m[0]):04x}", text)


class _Context(logging.Filter):
    def __init__(self, role: str, node: str) -> None:
        super().__init__()
        self.role, self.node = role, node

    def filter(self, record: logging.LogRecord) -> bool:
        record.role = self.role
        if self.node:
            record.node = self.node
        return True


def configure(level: str = "info", fmt: str = "text", role: str = "main", node: str = "") -> None:
    """Route stagerunner's records to stderr in the chosen format. Safe to call again."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    handler.addFilter(_Context(role, node))
    root = logging.getLogger("stagerunner")
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    root.propagate = False


def line(logger: logging.Logger, level: int, msg: str, fields: dict[str, Any]) -> None:
    """A line a node writes per task, at a fraction of ``logger.log``'s cost: below the
    logger's level nothing is built, and the record skips the caller lookup (a walk up
    the stack for a file and line number that our formatters never print), so it carries
    no caller: pathname "", lineno 0, funcName None."""
    if logger.isEnabledFor(level):
        logger.handle(logger.makeRecord(logger.name, level, "", 0, msg, (), None, extra=fields))


def set_title(title: str) -> None:
    """Name this process for `ps` and `top` (setproctitle when installed, else comm)."""
    try:
        import setproctitle

        setproctitle.setproctitle(title)
    except ImportError:
        try:
            with open("/proc/self/comm", "w") as f:
                f.write(title.replace("stagerunner: ", "sr-")[:15])
        except OSError:
            pass


_JOB: dict[str, Any] = {}  # in a job child: the running job's fields (task_id, attempt)


def job_fields(**fields: Any) -> None:
    """Set (or, without arguments, clear) the fields every record of this job carries."""
    _JOB.clear()
    _JOB.update(fields)


def route_job_logs() -> None:
    """In a job child: records of any logger (the task's own ``logging``) carry the job's
    task_id and attempt, and, unless the task modules configured logging themselves, reach
    the node's log in its format and at its level."""
    ours, root = logging.getLogger("stagerunner"), logging.getLogger()
    if ours.handlers and not root.handlers:
        root.addHandler(ours.handlers[0])
        root.setLevel(ours.level)
    make = logging.getLogRecordFactory()

    def record(*args: Any, **kwargs: Any) -> logging.LogRecord:
        rec = make(*args, **kwargs)
        if _JOB:
            rec.__dict__.update(_JOB)
        return rec

    logging.setLogRecordFactory(record)
