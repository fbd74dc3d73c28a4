"""How many CPUs this process may use: its affinity mask, capped by the cgroup CPU quota
(what a container's ``--cpus`` or a Kubernetes CPU limit sets), so that defaults derived
from it follow the container rather than the host.

The parsing is pure (file contents in, numbers out) and unit-tested with fixture files;
``usable_cpus`` reads the files. cgroup v2 keeps the quota in ``cpu.max`` ("max 100000"
or "200000 100000": quota and period in µs); v1 in ``cpu.cfs_quota_us`` (-1 = none) and
``cpu.cfs_period_us``. A quota applies to the cgroup and every cgroup below it, so the
smallest one on the way up from ours to the root wins.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterable
from pathlib import Path

CGROUP_ROOT = Path("/sys/fs/cgroup")


def parse_cpu_max(text: str) -> float | None:
    """cgroup v2 ``cpu.max`` -> CPUs allowed (None: no quota, or unreadable)."""
    fields = text.split()
    if len(fields) != 2 or fields[0] == "max":
        return None
    try:
        quota, period = int(fields[0]), int(fields[1])
    except ValueError:
        return None
    return quota / period if quota > 0 and period > 0 else None


def parse_cfs(quota_text: str, period_text: str) -> float | None:
    """cgroup v1 ``cpu.cfs_quota_us`` and ``cpu.cfs_period_us`` -> CPUs allowed (None: no
    quota)."""
    try:
        quota, period = int(quota_text.strip()), int(period_text.strip())
    except ValueError:
        return None
    return quota / period if quota > 0 and period > 0 else None


def parse_proc_cgroup(text: str) -> tuple[str | None, str | None]:
    """``/proc/self/cgroup`` -> (v2 path, v1 cpu controller path); None where absent."""
    v2 = v1 = None
    for line in text.splitlines():
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        _, controllers, path = parts
        if controllers == "":
            v2 = path
        elif "cpu" in controllers.split(","):
            v1 = path
    return v2, v1


def cpus_from(affinity: int, quotas: Iterable[float | None]) -> int:
    """The whole CPUs we may use: the affinity, capped by the smallest quota rounded up
    (a quota of 1.5 CPUs keeps two consumers' worth of work busy), at least 1."""
    found = [q for q in quotas if q is not None]
    limit = math.ceil(min(found)) if found else affinity
    return max(1, min(affinity, limit))


def _read(path: Path) -> str | None:
    try:
        return path.read_text()
    except OSError:
        return None


def _upwards(base: Path, path: str | None) -> list[Path]:
    """base/path and each of its parents up to base (a container sees its own cgroup at
    the root of the mount, so base itself is always tried)."""
    dirs = [base]
    if path and path != "/":
        rel = Path(path.lstrip("/"))
        dirs = [base / p for p in [rel, *rel.parents] if str(p) != "."] + [base]
    return dirs


def quotas(root: Path = CGROUP_ROOT, proc_cgroup: str | None = None) -> list[float | None]:
    """Every CPU quota that applies to us, read from cgroup v2 and v1 files under `root`."""
    text = proc_cgroup if proc_cgroup is not None else (_read(Path("/proc/self/cgroup")) or "")
    v2, v1 = parse_proc_cgroup(text)
    found: list[float | None] = []
    for d in _upwards(root, v2):
        cpu_max = _read(d / "cpu.max")
        if cpu_max is not None:
            found.append(parse_cpu_max(cpu_max))
    for mount in ("cpu", "cpu,cpuacct", "cpuacct,cpu"):
        for d in _upwards(root / mount, v1):
            quota, period = _read(d / "cpu.cfs_quota_us"), _read(d / "cpu.cfs_period_us")
            if quota is not None and period is not None:
                found.append(parse_cfs(quota, period))
    return found


def usable_cpus() -> int:
    """CPUs this process may run on: affinity capped by the cgroup quota."""
    try:
        affinity = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        affinity = os.cpu_count() or 1
    return cpus_from(affinity, quotas())
