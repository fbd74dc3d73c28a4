"""The process library, imported in this one place.

Stages are started with the stdlib ``multiprocessing`` (the default) or ``multiprocess``
(the design card's first choice; STAGERUNNER_PROCESS_LIBRARY=multiprocess), always with
the ``spawn`` start method. The default rests on bin/bench's measurement: a consumer
spawned by ``multiprocess`` imports dill and carries ~4 MiB more RSS (17.2 vs 13.2 MiB
idle), which every job's fork pays again, and its pickler is ~3x slower (44 vs 15 us a
message) -- though with bytes on the pipes only stage start-up pickles anything.
Spawn: a stage starts as a fresh interpreter, so a consumer does not carry the
supervisor's pydantic and psycopg pages into every fork of a job child, and never
inherits a database socket. Only stage start-up goes through the library's pickler;
on the pipes every message is bytes (``send_bytes``), so the per-job path is the
same whichever library started the stage.
"""

from __future__ import annotations

import importlib
from multiprocessing.connection import Connection, wait
from multiprocessing.reduction import recv_handle, send_handle
from typing import Any

__all__ = ["Connection", "context", "recv_handle", "send_handle", "wait"]


def context(library: str = "multiprocessing") -> Any:
    """The spawn context of the chosen library."""
    if library not in ("multiprocess", "multiprocessing"):
        raise ValueError(f"unknown process library {library!r}")
    return importlib.import_module(library).get_context("spawn")
