"""The benchmark's database and nodes: ``bench_<pid>`` on the admin DSN, nodes started
through the support library, and who is who in a node's process tree (by parentage,
not by titles, since setproctitle is optional)."""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from stagerunner import store
from stagerunner_tools import dbs, procfs
from stagerunner_tools.nodes import NodeProcess, node_env
from stagerunner_tools.stats import kib_to_mib, median

TASK_MODULE = "stagerunner_tools.bench_tasks"
BENCH_APP = "stagerunner-bench"  # application_name of the bench's own connections


class BenchError(RuntimeError):
    pass


class BenchDB:
    """bench_<pid>, created from the admin DSN and dropped at the end."""

    def __init__(self, admin_dsn: str) -> None:
        self.admin_dsn = admin_dsn
        self.name = f"bench_{os.getpid()}"
        self.dsn = dbs.with_dbname(admin_dsn, self.name)
        self.conn: Any = None

    def create(self) -> None:
        dbs.create_database(self.admin_dsn, self.name, schema=True)
        self.conn = self.connect()

    def connect(self) -> Any:
        return dbs.connect_retrying(self.dsn, application_name=BENCH_APP)

    def drop(self) -> None:
        store.close_quietly(self.conn)
        dbs.drop_database(self.admin_dsn, self.name)

    def backends(self) -> list[int]:
        """The PostgreSQL backends of the node's connections."""
        return dbs.node_backends(self.conn, self.name)

    def reset(self) -> None:
        """Empty the task, node and queue tables (only while no node runs)."""
        self.conn.execute("TRUNCATE stagerunner.tasks, stagerunner.nodes, stagerunner.queues")

    def analyze(self) -> None:
        self.conn.execute("ANALYZE stagerunner.tasks")

    def scalar(self, sql: str, params: Any = None) -> Any:
        row = self.conn.execute(sql, params).fetchone()
        return row[0] if row else None

    def rows(self, sql: str, params: Any = None) -> list[tuple[Any, ...]]:
        return list(self.conn.execute(sql, params).fetchall())

    def unfinished(self) -> int:
        return int(self.scalar(
            "SELECT count(*) FROM stagerunner.tasks WHERE status IN ('waiting', 'running')"))

    def wait_finished(self, timeout: float, node: Node | None = None, interval: float = 0.2,
                      during: Callable[[], None] | None = None) -> bool:
        """Poll until no task is waiting or running; False on timeout (or a dead node)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.unfinished() == 0:
                return True
            if node is not None and node.proc.poll() is not None:
                raise BenchError(f"the node exited with code {node.proc.returncode}: {node.log_tail()}")
            if during is not None:
                during()
            time.sleep(interval)
        return False

    def status_counts(self) -> dict[str, int]:
        return {s: int(n) for s, n in self.rows(
            "SELECT status::text, count(*) FROM stagerunner.tasks GROUP BY 1")}


@dataclass
class Roles:
    supervisor: int
    producer: int | None = None
    consumers: list[int] = field(default_factory=list)
    forkers: list[int] = field(default_factory=list)
    jobs: list[int] = field(default_factory=list)
    other: list[int] = field(default_factory=list)


class Node(NodeProcess):
    """``python -m stagerunner run`` for the bench: quiet logs, the bench's task module, and
    who is who in its tree."""

    live: list[Node] = []  # every node not yet stopped, for the final clean-up

    def __init__(self, db: BenchDB, consumers: int, extra_env: dict[str, str], workdir: Path,
                 label: str) -> None:
        self.db = db
        self.consumers = consumers
        self.name = f"bench-{os.getpid()}"
        env = node_env(db.dsn, TASK_MODULE, consumers=consumers, log_level="warning",
                       node_name=self.name)
        env.pop("STAGERUNNER_POLL_INTERVAL")  # the bench measures the defaults
        env.update(extra_env)
        super().__init__(env, workdir / f"node-{label}-{time.monotonic_ns()}.log")
        Node.live.append(self)

    def producer_pid(self) -> int | None:
        pid = self.db.scalar("SELECT pid FROM stagerunner.nodes WHERE node = %s "
                             "ORDER BY started_at DESC LIMIT 1", (self.name,))
        return int(pid) if pid is not None else None

    def roles(self, producer: int | None = None) -> Roles:
        stats = procfs.table()
        sup = self.proc.pid
        roles = Roles(sup)
        producer = producer if producer is not None else self.producer_pid()
        for pid in procfs.stage_children(sup, stats):
            if pid == producer:
                roles.producer = pid
            elif procfs.is_fork_server(pid) or "resource_tracker" in procfs.cmdline(pid):
                roles.other.append(pid)
            else:
                roles.consumers.append(pid)
                for forker in procfs.children(pid, stats):  # a consumer's one child
                    roles.forkers.append(forker)
                    roles.jobs.extend(procfs.descendants(forker, stats))
        return roles

    def wait_ready(self, timeout: float = 60.0) -> Roles:
        """Until the producer has beaten and every consumer's fork helper has its
        pre-forked job child."""
        deadline = time.monotonic() + timeout
        producer = None
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise BenchError(f"the node exited with code {self.proc.returncode}: {self.log_tail()}")
            producer = producer or self.producer_pid()
            if producer is not None:
                roles = self.roles(producer)
                stats = procfs.table()
                if (roles.producer and len(roles.consumers) == self.consumers
                        and all(any(procfs.children(f, stats) for f in procfs.children(c, stats))
                                for c in roles.consumers)):
                    return roles
            time.sleep(0.05)
        raise BenchError(f"the node was not ready within {timeout:g} s: {self.log_tail()}")

    def finish(self, timeout: float = 45.0) -> int | None:
        """SIGTERM and wait; SIGKILL the whole tree if it does not exit in time."""
        try:
            return self.stop(timeout=timeout)
        except Exception:
            return None
        finally:
            self.kill()
            if self in Node.live:
                Node.live.remove(self)

    def log_problems(self) -> list[str]:
        return [line for line in self.log().splitlines() if " ERROR " in line or "Traceback" in line]

    def __enter__(self) -> Node:
        return self

    def __exit__(self, *exc: Any) -> None:
        if exc[0] is None:
            code = self.finish()
            if code not in (0, None):
                raise BenchError(f"the node exited with code {code}: {self.log_tail()}")
        else:
            self.kill()
            if self in Node.live:
                Node.live.remove(self)


def role_rss_mib(roles: Roles) -> dict[str, float]:
    """VmRSS per role; consumers and job children as medians."""
    out: dict[str, float] = {}
    for role, pids in (("supervisor", [roles.supervisor]),
                       ("producer", [roles.producer] if roles.producer else []),
                       ("consumer", roles.consumers), ("forker", roles.forkers),
                       ("job", roles.jobs)):
        values = [v for v in (procfs.rss_kib(p) for p in pids) if v is not None]
        if values:
            out[role] = kib_to_mib(median(values))
    return out


class DrainWatch:
    """Called between completion polls of a drain: samples RSS per role every 0.5 s and,
    once the node is claiming, snapshots CPU ticks per role (node processes and the
    node's PostgreSQL backends) so CPU per task can be computed at the end."""

    def __init__(self, db: BenchDB, node: Node, tasks: int, rss: bool, cpu: bool) -> None:
        self.db, self.node, self.tasks = db, node, tasks
        self.rss, self.cpu = rss, cpu
        self.producer: int | None = None
        self.next_rss = time.monotonic() + 0.5
        self.rss_samples: list[dict[str, float]] = []
        self.pids: dict[str, list[int]] = {}
        self.start_ns: dict[int, int] = {}
        self.done_at_start = 0

    def step(self) -> None:
        if not (self.rss or (self.cpu and not self.pids)):
            return
        self.producer = self.producer or self.node.producer_pid()
        if self.producer is None:
            return
        roles = self.node.roles(self.producer)
        if len(roles.consumers) != self.node.consumers or len(roles.forkers) != len(roles.consumers):
            return  # still starting (a consumer without its fork helper yet would count none)
        if self.cpu and not self.pids:
            self.pids = {"supervisor": [roles.supervisor], "producer": [self.producer],
                         "consumers": roles.consumers, "forkers": roles.forkers,
                         "postgres": self.db.backends()}
            self.done_at_start = self.tasks - self.db.unfinished()
            self.start_ns = procfs.cpu_with_children_ns(p for ps in self.pids.values() for p in ps)
        if self.rss and len(self.rss_samples) < 10 and time.monotonic() >= self.next_rss:
            self.rss_samples.append(role_rss_mib(roles))
            self.next_rss = time.monotonic() + 0.5

    def cpu_per_task(self) -> dict[str, float]:
        """CPU ms per task by role since the snapshot (fork helpers include their reaped
        job children)."""
        if not self.pids:
            return {}
        done = self.tasks - self.done_at_start
        if done <= 0:
            return {}
        end = procfs.cpu_with_children_ns(p for ps in self.pids.values() for p in ps)
        out = {role: sum(end.get(p, 0) - self.start_ns.get(p, 0) for p in pids) / 1e6 / done
               for role, pids in self.pids.items()}
        out["total"] = sum(out.values())
        return out


