"""The consumers' fork server, and the environment it and every job run with.

A consumer used to be a spawned interpreter: each paid ~0.1-0.2 s of CPU for its
interpreter and the runtime's imports, after the supervisor had read its settings. Now the
process library's fork server (``forkserver``) is started at a node's exec, before the
supervisor imports pydantic-settings and psycopg; it imports the consumer's runtime on
the other core meanwhile, and forks each consumer, now and at every restart, in a few
milliseconds. A consumer still imports the task modules itself, after its fork, so a
restart or a reload picks up their new code. The server holds nothing of the supervisor:
it is a fresh interpreter, not a fork (whose 49 MiB every job's fork would pay).

The server runs with the jobs' environment, never the runner's: a consumer, and so every
job child, inherits its memory, where a variable deleted later would still be readable
(``/proc/<pid>/environ``). The library starts it anew after a death, at the next
consumer's start, which ``spawning_as_jobs`` wraps.

Imported first by ``cli`` for ``run``: it imports nothing heavy of ours.
"""

from __future__ import annotations

import contextlib
import importlib
import os
from collections.abc import Iterator, Mapping

DEFAULT_LIBRARY = "multiprocessing"  # config's default for STAGERUNNER_PROCESS_LIBRARY
PRELOAD = ["stagerunner.consumer"]
RUNNER_PREFIXES = ("STAGERUNNER_", "PG")  # PG*: libpq's (PGPASSWORD, PGUSER, PGHOST, ...)
RUNNER_VARIABLES = ("DATABASE_URL",)
_started: str | None = None  # the library whose server ``start`` started


def job_environment() -> dict[str, str]:
    """The environment a job child runs with: ours minus the credentials the runner
    connects with -- every STAGERUNNER_* variable, DATABASE_URL, and libpq's PG* ones."""
    return {k: v for k, v in os.environ.items()
            if not k.startswith(RUNNER_PREFIXES) and k not in RUNNER_VARIABLES}


@contextlib.contextmanager
def spawning_as_jobs(environment: Mapping[str, str]) -> Iterator[None]:
    """Our environment swapped for `environment` while a process is started from it
    (the fork server, the resource tracker, a spawned stage): a new interpreter gets ours
    as its own. For a few milliseconds: a thread of ours that read PG* variables
    meanwhile would miss them."""
    saved = dict(os.environ)
    os.environ.clear()
    os.environ.update(environment)
    try:
        yield
    finally:
        os.environ.clear()
        os.environ.update(saved)


def start(library: str = DEFAULT_LIBRARY) -> None:
    """Start `library`'s fork server, preloading the consumer's runtime, if it is not
    running. If it cannot start, the first consumer's start tries again and says why."""
    global _started
    with contextlib.suppress(ImportError):  # (setproctitle is optional: ``logs.set_title``)
        import setproctitle

        setproctitle.getproctitle()  # finds the room for our titles before the swap below
    server = importlib.import_module(f"{library}.forkserver")
    server.set_forkserver_preload(PRELOAD)
    try:
        with spawning_as_jobs(job_environment()):
            server.ensure_running()
    except OSError:
        return
    _started = library


def use(library: str) -> None:
    """The settings chose `library`: its fork server runs, preloaded; one started early
    (at exec, before the settings were read) for the other library is stopped."""
    if _started not in (None, library):
        server = importlib.import_module(f"{_started}.forkserver")
        with contextlib.suppress(AttributeError, OSError, ChildProcessError):
            server._forkserver._stop()  # the library's own, private: it has no public stop
    start(library)


def orphaned(supervisor: int) -> bool:
    """In a consumer at its start: whether `supervisor` is gone, being neither our parent
    nor our parent's (the fork server's)."""
    parent = os.getppid()
    try:
        with open(f"/proc/{parent}/stat", "rb") as f:
            grandparent = int(f.read().rsplit(b")", 1)[1].split()[1])
    except (OSError, ValueError, IndexError):
        grandparent = None
    return supervisor not in (parent, grandparent)
