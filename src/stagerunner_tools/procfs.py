"""Reading /proc, once for the tests, the chaos run and the benchmark: parents, children
and descendants, start times (so a pid we recorded is only "ours" if that process is
still the one we saw), command lines, memory and CPU.

The stat line's parsing is the runtime's own (``stagerunner.procs.stat_fields``).
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from stagerunner.procs import stat_fields

CLK_TCK = os.sysconf("SC_CLK_TCK")


def pids() -> list[int]:
    return [int(e) for e in os.listdir("/proc") if e.isdigit()]


def ppid_of(pid: int) -> int | None:
    fields = stat_fields(pid)
    return int(fields[1]) if fields else None


def alive(pid: int) -> bool:
    """The process exists and is not a zombie."""
    fields = stat_fields(pid)
    return fields is not None and fields[0] != "Z"


def started_at(pid: int) -> float | None:
    """Wall-clock start time of a live (non-zombie) process, or None."""
    fields = stat_fields(pid)
    if fields is None or fields[0] == "Z":
        return None
    since_boot = int(fields[19]) / CLK_TCK  # field 22, starttime, in ticks since boot
    return time.time() - time.clock_gettime(time.CLOCK_BOOTTIME) + since_boot


def alive_since(pid: int, seen_at: float) -> bool:
    """Is the process we saw alive at `seen_at` (wall clock) still alive?

    pid_max may be 32768 and a node forks hundreds of jobs a second, so a pid we
    recorded may belong to another process by now: it only counts as ours if it started
    before we saw it (a pid is never reused while its process lives)."""
    start = started_at(pid)
    return start is not None and start <= seen_at


def seen_now(found: Iterable[int]) -> dict[int, float]:
    now = time.time()
    return {p: now for p in found}


def pidfile_pids(path: Path) -> dict[int, float]:
    """Pids a job wrote (one a line), each seen alive when the file was last written."""
    written = path.stat().st_mtime
    return {int(p): written for p in path.read_text().split()}


def kill_if_ours(pid: int, seen_at: float, marker: str = "") -> bool:
    """SIGKILL `pid` only if it is the process we saw (and its command line holds
    `marker`); True if a signal was sent."""
    if alive_since(pid, seen_at) and marker in cmdline(pid):
        try:
            os.kill(pid, signal.SIGKILL)
            return True
        except ProcessLookupError:
            pass
    return False


def cmdline(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read().replace(b"\0", b" ").decode(errors="replace").strip()
    except OSError:
        return ""


def comm(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/comm") as f:
            return f.read().strip()
    except OSError:
        return ""


def rss_kib(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


# The process table -------------------------------------------------------------------

@dataclass(frozen=True)
class Stat:
    pid: int
    state: str
    ppid: int
    session: int
    cpu_ticks: int  # utime + stime + cutime + cstime
    child_ticks: int  # cutime + cstime: the reaped children's share of cpu_ticks


def parse_stat(text: str) -> Stat:
    """The fields we need from /proc/PID/stat; the comm field may hold spaces and ')'."""
    head, _, rest = text.rpartition(")")
    pid = int(head.split("(", 1)[0])
    f = rest.split()
    # f[0] is field 3 (state): ppid=4, session=6, utime..cstime=14..17
    return Stat(pid, f[0], int(f[1]), int(f[3]), sum(int(x) for x in f[11:15]),
                int(f[13]) + int(f[14]))


def read_stat(pid: int) -> Stat | None:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return parse_stat(f.read())
    except (OSError, ValueError, IndexError):
        return None


def table() -> dict[int, Stat]:
    """Every process's stat, read once."""
    stats = {}
    for pid in pids():
        st = read_stat(pid)
        if st is not None:
            stats[st.pid] = st
    return stats


def children(pid: int, stats: dict[int, Stat] | None = None) -> list[int]:
    """Live (non-zombie) direct children of `pid`."""
    stats = stats if stats is not None else table()
    return [p for p, st in stats.items() if st.ppid == pid and st.state != "Z"]


def stage_children(supervisor: int, stats: dict[int, Stat] | None = None) -> list[int]:
    """A node's stage processes and the process library's helpers: the supervisor's
    children, and the children of its fork server (the consumers: ``stageserver``)."""
    stats = stats if stats is not None else table()
    kids = children(supervisor, stats)
    return kids + [c for server in fork_servers(supervisor, stats)
                   for c in children(server, stats)]


def is_fork_server(pid: int) -> bool:
    """A process library's fork server (its command line names ``stagerunner.consumer``,
    which it preloads: not a consumer)."""
    return ".forkserver import main" in cmdline(pid)


def fork_servers(supervisor: int, stats: dict[int, Stat] | None = None) -> list[int]:
    """The fork servers among a node's supervisor's children (one, but for a moment)."""
    return [p for p in children(supervisor, stats) if is_fork_server(p)]


def descendants(root: int, stats: dict[int, Stat] | None = None, sessions: bool = False
                ) -> list[int]:
    """Live descendants of `root` by parent links; with `sessions`, also every member of a
    session that root or a descendant leads (stages leave their parent's session)."""
    stats = stats if stats is not None else table()
    kids: dict[int, list[int]] = {}
    for st in stats.values():
        if st.state != "Z":
            kids.setdefault(st.ppid, []).append(st.pid)
    found: list[int] = []
    todo = list(kids.get(root, []))
    while todo and len(found) < 100_000:
        pid = todo.pop()
        if pid not in found:
            found.append(pid)
            todo.extend(kids.get(pid, []))
    if sessions:
        leaders = set(found) | {root}
        found += [p for p, st in stats.items()
                  if st.session in leaders and p not in found and p != root and st.state != "Z"]
    return found


def kill_tree(root: int) -> None:
    """SIGKILL root and every process below it, sessions they lead included."""
    me = os.getpid()
    for pid in [root, *descendants(root, sessions=True)]:
        if pid != me:
            try:
                os.kill(pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass


# CPU ---------------------------------------------------------------------------------

def parse_schedstat_ns(text: str) -> int:
    """Nanoseconds on CPU from /proc/PID/schedstat ("run_ns wait_ns timeslices")."""
    return int(text.split()[0])


def cpu_ns(found: Iterable[int]) -> dict[int, int]:
    """Nanoseconds on CPU of each live process (own time only; precise, unlike ticks)."""
    out = {}
    for pid in found:
        try:
            with open(f"/proc/{pid}/schedstat") as f:
                out[pid] = parse_schedstat_ns(f.read())
        except (OSError, ValueError, IndexError):
            pass
    return out


def cpu_with_children_ns(found: Iterable[int]) -> dict[int, int]:
    """Own CPU (schedstat, ns) plus that of reaped children (stat cutime+cstime, ticks)."""
    ns_per_tick = 1e9 / CLK_TCK
    own = cpu_ns(found)
    return {p: own[p] + int(st.child_ticks * ns_per_tick) for p in own
            if (st := read_stat(p)) is not None}
