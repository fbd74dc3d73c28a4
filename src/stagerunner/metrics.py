"""Prometheus metrics and health, served by the supervisor when STAGERUNNER_METRICS_PORT is
set: ``/metrics``, ``/healthz`` (the stages are alive and the producer's loop is recent)
and ``/readyz`` (the producer is connected to the database).

The producer counts what passes through it (outcomes, run times, credits, rescues,
reconnects) and sends its counters to the supervisor with every liveness report
(``Stats.to_wire``). Table-wide numbers come from the database on the server's own
connection, at most once a second, with a statement timeout, and only from cheap queries
(live rows through their partial indexes; finished rows exact on a small table,
estimated on a large one). Serving runs in a thread of the supervisor, so a slow scrape
never touches the producer's loop: claims, heartbeats and outcomes go on.
"""

from __future__ import annotations

import logging
import threading
import time
from bisect import bisect_left
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cache
from typing import Any

log = logging.getLogger(__name__)

BUCKETS_S = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
TABLE_CACHE_S = 1.0
EXACT_BELOW_ROWS = 100_000  # finished rows are counted exactly below this, estimated above


@cache
def _bucket_keys(queue: str) -> tuple[str, ...]:
    """A queue's histogram keys, one per bound, formatted once (not on every outcome)."""
    return tuple(f"{queue}\t{bound}" for bound in BUCKETS_S)


@dataclass
class Stats:
    """The producer's counters, as it sends them with each liveness report."""

    outcomes: Counter[str] = field(default_factory=Counter)  # "queue\tstatus" -> n
    # "queue\tbound" -> runs of at most that bound and more than the one below it (one
    # increment a run; ``render`` makes the buckets cumulative, as the format wants)
    runtime_buckets: Counter[str] = field(default_factory=Counter)
    runtime_sum: Counter[str] = field(default_factory=Counter)
    runtime_count: Counter[str] = field(default_factory=Counter)
    rescued: int = 0
    reconnects: int = 0
    consumer_deaths: int = 0
    credits: int = 0
    consumers: int = 0
    connected: bool = False

    def observe(self, queue: str, status: str, runtime_ms: float) -> None:
        self.outcomes[f"{queue}\t{status}"] += 1
        seconds = runtime_ms / 1000
        i = bisect_left(BUCKETS_S, seconds)  # the smallest bound >= it
        if i < len(BUCKETS_S):
            self.runtime_buckets[_bucket_keys(queue)[i]] += 1
        self.runtime_sum[queue] += seconds  # type: ignore[assignment]  # a Counter of floats
        self.runtime_count[queue] += 1

    def summary(self, running: int) -> dict[str, Any]:
        """What a node's row says about it (``nodes.info``): outcomes by status since the
        producer started, jobs running now, and the troubles it saw."""
        by_status: Counter[str] = Counter()
        for key, n in self.outcomes.items():
            by_status[key.rpartition("\t")[2]] += n
        return {"jobs_running": running, **{f"finished_{s}": n for s, n in sorted(by_status.items())},
                "rescued": self.rescued, "reconnects": self.reconnects,
                "consumer_deaths": self.consumer_deaths}

    def to_wire(self) -> dict[str, Any]:
        return {k: (dict(v) if isinstance(v, Counter) else v) for k, v in vars(self).items()}

    @classmethod
    def from_wire(cls, data: object) -> Stats:
        """Stats from a report; anything malformed counts as nothing (a report is untrusted
        only in the sense that it crosses a pipe: never crash on it)."""
        stats = cls()
        if not isinstance(data, dict):
            return stats
        for name, value in data.items():
            current = getattr(stats, name, None)
            if isinstance(current, Counter) and isinstance(value, dict):
                current.update({str(k): v for k, v in value.items() if isinstance(v, (int, float))})
            elif isinstance(current, (bool, int)) and isinstance(value, type(current)):
                setattr(stats, name, value)
        return stats


def render(stats: Stats, restarts: dict[str, int], live: list[dict[str, Any]],
           finished: list[dict[str, Any]]) -> str:
    """The text exposition format; each family's samples together, as the format requires."""
    out: list[str] = []

    def family(name: str, kind: str, help_text: str, samples: list[tuple[str, float]]) -> None:
        out.append(f"# HELP stagerunner_{name} {help_text}")
        out.append(f"# TYPE stagerunner_{name} {kind}")
        out.extend(f"stagerunner_{name}{labels} {_num(value)}" for labels, value in samples)

    family("tasks", "gauge", "Waiting and running tasks by queue and status.",
           [(_labels(queue=r["queue"], status=r["status"]), r["n"]) for r in live])
    family("queue_depth", "gauge", "Waiting tasks per queue.",
           [(_labels(queue=r["queue"]), r["n"]) for r in live if r["status"] == "waiting"])
    family("oldest_waiting_seconds", "gauge", "Age of the oldest due waiting task per queue.",
           [(_labels(queue=r["queue"]), r["oldest_waiting_s"] or 0.0)
            for r in live if r["status"] == "waiting"])
    family("finished_tasks", "gauge", "Finished tasks kept in the table by status (exact on "
           f"a table under {EXACT_BELOW_ROWS} rows, the planner's estimate above).",
           [(_labels(status=r["status"]), r["n"]) for r in finished])
    family("outcomes_total", "counter", "Outcomes written by this node's current producer.",
           [(_labels(queue=q, status=s), n) for (q, s), n in _split(stats.outcomes)])
    histogram: list[tuple[str, float]] = []
    for queue in sorted(stats.runtime_count):
        below = 0
        for bound, key in zip(BUCKETS_S, _bucket_keys(queue)):
            below += stats.runtime_buckets[key]
            histogram.append((f"_bucket{_labels(queue=queue, le=str(bound))}", below))
        histogram += [(f"_bucket{_labels(queue=queue, le='+Inf')}", stats.runtime_count[queue]),
                      (f"_sum{_labels(queue=queue)}", round(stats.runtime_sum[queue], 6)),
                      (f"_count{_labels(queue=queue)}", stats.runtime_count[queue])]
    family("job_runtime_seconds", "histogram", "Run time of jobs, child start to result.",
           histogram)
    family("credits_outstanding", "gauge", "Demand credits consumers asked for and not yet got.",
           [("", stats.credits)])
    family("consumers", "gauge", "Consumers attached to the producer.", [("", stats.consumers)])
    family("restarts_total", "counter", "Stage restarts seen by this node.",
           [(_labels(stage=s), n) for s, n in sorted(restarts.items())])
    family("rescued_total", "counter", "Tasks this node handed back from dead nodes.",
           [("", stats.rescued)])
    family("db_reconnects_total", "counter", "Times the producer lost its database connection.",
           [("", stats.reconnects)])
    return "\n".join(out) + "\n"


def _split(counter: Counter[str]) -> list[tuple[tuple[str, str], int]]:
    return sorted((tuple(k.split("\t", 1)), n) for k, n in counter.items() if "\t" in k)  # type: ignore[misc]


def _labels(**labels: str) -> str:
    inner = ",".join(f'{k}="{_esc(str(v))}"' for k, v in labels.items())
    return "{" + inner + "}"


def _num(value: float) -> str:
    return repr(float(value)) if isinstance(value, float) else str(value)


def _esc(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


# Serving --------------------------------------------------------------------------------

@dataclass
class Snapshot:
    """What the supervisor knows right now (read by the server thread)."""

    stats: Stats
    restarts: dict[str, int]
    healthy: bool
    ready: bool


def bound(settings: Any, dsn: str, snapshot: Callable[[], Snapshot], pooled: bool
          ) -> Server | None:
    """The node's metrics server, its port bound but not serving yet (None: no port set);
    ConfigError naming the settings if the port cannot be had (in use, a bad host)."""
    host, port = settings.metrics_host, settings.metrics_port
    if not port:
        return None
    from stagerunner.errors import ConfigError

    try:
        return Server(host, port, dsn, snapshot, pooled=pooled)
    except OSError as exc:
        raise ConfigError(f"STAGERUNNER_METRICS_HOST={host!r} STAGERUNNER_METRICS_PORT={port}: "
                          f"cannot listen there: {exc.strerror or exc}") from None


class Server:
    """A small HTTP server in a daemon thread. `snapshot` is called from that thread; the
    database is read on the server's own connection."""

    def __init__(self, host: str, port: int, dsn: str, snapshot: Callable[[], Snapshot],
                 pooled: bool = False) -> None:
        # here, not at the top: ~8 ms of imports (beyond what a node has loaded already)
        # that it pays before its first job only when it serves metrics
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

        self.dsn = dsn
        self.pooled = pooled
        self.snapshot = snapshot
        self.lock = threading.Lock()
        self.table: tuple[float, list[dict[str, Any]], list[dict[str, Any]]] = (0.0, [], [])
        self.conn: Any = None
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 (the stdlib's name)
                code, body = server.answer(self.path)
                data = body.encode()
                self.send_response(code)
                self.send_header("Content-Type", "text/plain; version=0.0.4; charset=utf-8")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args: Any) -> None:
                pass  # a scrape a second is not news

        self.http = ThreadingHTTPServer((host, port), Handler)
        self.http.daemon_threads = True
        self.thread = threading.Thread(target=self.http.serve_forever, name="metrics", daemon=True)

    def start(self) -> None:
        self.thread.start()

    def close(self) -> None:
        self.http.shutdown()
        self.http.server_close()

    def answer(self, path: str) -> tuple[int, str]:
        snap = self.snapshot()
        route = path.split("?", 1)[0]
        if route == "/healthz":
            return (200, "ok\n") if snap.healthy else (503, "unhealthy\n")
        if route == "/readyz":
            return (200, "ready\n") if snap.ready else (503, "not connected to the database\n")
        live, finished = self._tables()
        return 200, render(snap.stats, snap.restarts, live, finished)

    def _tables(self) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        at, live, finished = self.table
        if time.monotonic() - at < TABLE_CACHE_S or not self.lock.acquire(blocking=False):
            return live, finished  # fresh enough, or another scrape is asking right now
        try:
            live, finished = self._query()
            self.table = (time.monotonic(), live, finished)
        except Exception as exc:  # the last good numbers, and a log line
            log.warning("metrics query failed", extra={"event": "metrics.query_failed",
                                                       "error": str(exc).strip()[:200]})
            self.conn = None
        finally:
            self.lock.release()
        return live, finished

    def _query(self) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        from stagerunner import opstore, store

        if self.conn is None or self.conn.closed:
            self.conn = store.connect_guarded(self.dsn, pooled=self.pooled)
        return (opstore.count_live_tasks(self.conn),
                opstore.count_finished_tasks(self.conn, exact_below=EXACT_BELOW_ROWS))
