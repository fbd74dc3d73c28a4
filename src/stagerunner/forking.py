"""Forking a clean child, and which fork a job child gets.

``os.fork()`` runs every hook registered with ``os.register_at_fork`` and CPython's own
after-fork work in the child. In a fork helper the stdlib's hooks have nothing to do: it
is single-threaded (a fork keeps only the calling thread), holds no lock while it forks
and runs no event loop. Yet threading's hook alone made a child that exits at once write
~200 more pages, a no-op job child ~110 more, ~0.4 ms of its CPU (the README's
performance section). So a fork helper forks its job children with libc's ``fork()``,
which skips Python's hooks (C libraries' ``pthread_atfork`` handlers still run), and
reseeds ``random`` before each fork, the one stdlib hook whose effect a job can see.

Only while no other module may have registered a hook: a library's hook may have to run
in the child (OpenTelemetry's batch exporter restarts its thread there). A consumer
calls ``watch_hooks`` before it imports its task modules; a registration after that by a
module other than the stdlib's own, or a module outside the stdlib and stagerunner
already imported before it (a sitecustomize, the user's main script that the process
library ran again), keeps ``os.fork`` for that consumer's children, and the consumer
says so in its log. So does a build without the GIL, where CPython's after-fork work
does more.

What a bare child still differs in: a signal the helper received but had not yet handled
in Python (only a task module installs a Python handler there) is handled in the child
too, and its thread state's native id stays the helper's (which a profiler reading it
would show; ``threading`` reports the same under both).

Stdlib only, like ``procs``: fork helpers and their job children import it.
"""

from __future__ import annotations

import ctypes
import os
import posix
import sys
from collections.abc import Callable
from typing import Any

# the stdlib's hooks, harmless to skip in a single-threaded helper without an event loop
# (random's is replaced by the reseed in ``bare_fork``)
STDLIB_HOOKS = frozenset({"threading", "random", "logging", "concurrent.futures.thread",
                          "asyncio.events"})
# imported into a consumer before its task modules, known to register no hook
HARMLESS = frozenset({"stagerunner", "setproctitle", "multiprocess", "_multiprocess", "dill",
                      "_distutils_hack", "_virtualenv"})

_blockers: list[str] = []  # modules whose hooks (maybe) must run: os.fork for their sake
_watching = False
_fork: Any = None


def watch_hooks() -> None:
    """From now on, note who registers an at-fork hook; first, note the modules already
    imported that may have registered one unseen."""
    global _watching
    if _watching:
        return
    _watching = True
    _blockers.extend(_unknown_modules())
    real = posix.register_at_fork

    def register(*args: Any, **hooks: Any) -> None:
        caller = sys._getframe(1).f_globals.get("__name__", "?")
        if caller not in STDLIB_HOOKS:
            _blockers.append(caller)
        real(*args, **hooks)

    for module in (os, posix):  # os's is posix's
        setattr(module, "register_at_fork", register)


def blockers() -> list[str]:
    """The modules for whose at-fork hooks job children get ``os.fork`` (none: a bare
    fork). Before ``watch_hooks`` ran, anything may have registered one."""
    if not _watching:
        return ["(hooks not watched)"]
    if not getattr(sys, "_is_gil_enabled", lambda: True)():
        return ["(free-threaded build)"]
    return sorted(set(_blockers))


def _unknown_modules() -> list[str]:
    found = []
    for name, module in list(sys.modules.items()):
        top = name.partition(".")[0]
        if name in ("__main__", "__mp_main__"):
            if not _only_starts_stagerunner(module):
                found.append(getattr(module, "__file__", name))
        elif top not in sys.stdlib_module_names and top not in HARMLESS and not top.startswith(
                ("__editable__", "_sysconfigdata")):
            found.append(top)
    return found


def _only_starts_stagerunner(main: Any) -> bool:
    """A consumer's ``__main__``: the fork server's bootstrap (``-c``, no file; so it stays
    under ``python -m stagerunner``), or pip's ``stagerunner`` script, which the library
    runs again and
    which imports re, sys and stagerunner.cli's main, nothing else. Any other script was
    run again in the consumer, and may have registered hooks."""
    if getattr(main, "__file__", None) is None:
        return True
    names = {k for k in vars(main) if not k.startswith("__")}
    entry = vars(main).get("main")
    return names <= {"re", "sys", "main"} and getattr(entry, "__module__", "") == "stagerunner.cli"


def fork_running(keep_fds: set[int], body: Callable[[], object], bare: bool = False) -> int:
    """Fork a process that holds only fds 0-2 and `keep_fds`, runs `body` and exits
    (0, or 70 if it raised); never returns in the child. The child's pid. `bare`: skip
    Python's at-fork hooks (see the module's docstring; only from a single thread)."""
    pid = bare_fork() if bare else os.fork()
    if pid == 0:
        code = 0
        try:
            close_fds_except({0, 1, 2, *keep_fds})
            body()
        except BaseException:
            code = 70
        finally:
            os._exit(code)
    return pid


def bare_fork() -> int:
    global _fork
    if _fork is None:
        # PyDLL: the call keeps the GIL, so the child's only thread holds it, as it would
        _fork = ctypes.PyDLL(None, use_errno=True).fork
    random = sys.modules.get("random")
    if random is not None:
        random.seed()  # what random's own hook does in the child, done here, in the parent
    pid: int = _fork()
    if pid < 0:
        errno = ctypes.get_errno()
        raise OSError(errno, os.strerror(errno))
    return pid


def close_fds_except(keep: set[int]) -> None:
    top = os.sysconf("SC_OPEN_MAX")
    low = 0
    for fd in sorted(keep):
        if fd > low:
            os.closerange(low, fd)
        low = fd + 1
    os.closerange(low, top)
