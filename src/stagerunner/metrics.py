"""Prometheus metrics, served by the producer when STAGERUNNER_METRICS_PORT is set.

The producer counts what passes through it (outcomes, run times, restarts, credits) and
reads table-wide numbers (tasks by status and queue, oldest waiting age) from the
database at most once per second of scraping. Serving is a non-blocking socket in the
producer's own wait set: no thread, so job children are never forked from a threaded
process.
"""

from __future__ import annotations

import socket
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

BUCKETS_S = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


@dataclass
class Metrics:
    outcomes: Counter[tuple[str, str]] = field(default_factory=Counter)
    runtime_buckets: Counter[tuple[str, float]] = field(default_factory=Counter)
    runtime_sum: Counter[str] = field(default_factory=Counter)
    runtime_count: Counter[str] = field(default_factory=Counter)
    restarts: Counter[str] = field(default_factory=Counter)
    rescued: int = 0
    reconnects: int = 0

    def observe(self, queue: str, status: str, runtime_ms: float) -> None:
        self.outcomes[(queue, status)] += 1
        seconds = runtime_ms / 1000
        for bound in BUCKETS_S:
            if seconds <= bound:
                self.runtime_buckets[(queue, bound)] += 1
        self.runtime_sum[queue] += seconds
        self.runtime_count[queue] += 1

    def render(self, *, table: list[dict[str, Any]], credits: int, consumers: int) -> str:
        out: list[str] = []

        def family(name: str, kind: str, help_text: str) -> None:
            out.append(f"# HELP stagerunner_{name} {help_text}")
            out.append(f"# TYPE stagerunner_{name} {kind}")

        family("tasks", "gauge", "Tasks in the table by queue and status.")
        for row in table:
            out.append(f'stagerunner_tasks{{queue="{_esc(row["queue"])}",status="{row["status"]}"}} '
                       f'{row["n"]}')
        family("queue_depth", "gauge", "Waiting tasks per queue.")
        family("oldest_waiting_seconds", "gauge", "Age of the oldest due waiting task per queue.")
        for row in table:
            if row["status"] == "waiting":
                q = _esc(row["queue"])
                out.append(f'stagerunner_queue_depth{{queue="{q}"}} {row["n"]}')
                out.append(f'stagerunner_oldest_waiting_seconds{{queue="{q}"}} '
                           f'{row["oldest_waiting_s"] or 0.0:.3f}')
        family("outcomes_total", "counter", "Outcomes written by this producer.")
        for (queue, status), n in sorted(self.outcomes.items()):
            out.append(f'stagerunner_outcomes_total{{queue="{_esc(queue)}",status="{status}"}} {n}')
        family("job_runtime_seconds", "histogram", "Run time of jobs, child start to result.")
        for queue in sorted(self.runtime_count):
            q = _esc(queue)
            for bound in BUCKETS_S:
                out.append(f'stagerunner_job_runtime_seconds_bucket{{queue="{q}",le="{bound}"}} '
                           f"{self.runtime_buckets[(queue, bound)]}")
            out.append(f'stagerunner_job_runtime_seconds_bucket{{queue="{q}",le="+Inf"}} '
                       f"{self.runtime_count[queue]}")
            out.append(f'stagerunner_job_runtime_seconds_sum{{queue="{q}"}} {self.runtime_sum[queue]:.6f}')
            out.append(f'stagerunner_job_runtime_seconds_count{{queue="{q}"}} {self.runtime_count[queue]}')
        family("credits_outstanding", "gauge", "Demand credits consumers asked for and not yet got.")
        out.append(f"stagerunner_credits_outstanding {credits}")
        family("consumers", "gauge", "Consumers attached to this producer.")
        out.append(f"stagerunner_consumers {consumers}")
        family("restarts_total", "counter", "Stage restarts seen by this node.")
        for stage, n in sorted(self.restarts.items()):
            out.append(f'stagerunner_restarts_total{{stage="{stage}"}} {n}')
        family("rescued_total", "counter", "Tasks this node handed back from dead nodes.")
        out.append(f"stagerunner_rescued_total {self.rescued}")
        family("db_reconnects_total", "counter", "Times the producer lost its database connection.")
        out.append(f"stagerunner_db_reconnects_total {self.reconnects}")
        return "\n".join(out) + "\n"


def _esc(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def listen(host: str, port: int) -> socket.socket:
    server = socket.create_server((host, port), reuse_port=False)
    server.setblocking(False)
    return server


def answer(server: socket.socket, body: str) -> None:
    """Serve one waiting scrape (any GET path) without blocking the producer for long."""
    try:
        client, _ = server.accept()
    except BlockingIOError:
        return
    with client:
        client.settimeout(0.5)
        try:
            client.recv(4096)
            data = body.encode()
            client.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain; version=0.0.4\r\n"
                           b"Content-Length: " + str(len(data)).encode() + b"\r\n"
                           b"Connection: close\r\n\r\n" + data)
        except OSError:
            pass
