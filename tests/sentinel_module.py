"""Importing this module leaves a mark: tests check that rows never make a consumer import it."""

import os
from pathlib import Path

mark = os.environ.get("SENTINEL_MARK")
if mark:
    Path(mark).write_text("imported")


def run() -> str:
    return "ran"
