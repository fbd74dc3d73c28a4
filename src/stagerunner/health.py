"""``python -m stagerunner healthcheck``: asks the local node's health endpoint, for a
container HEALTHCHECK or a Kubernetes exec probe, and answers with an exit code.

The node serves ``/healthz`` (its stages are up and the producer's loop reported
recently) and ``/readyz`` (the producer is connected to the database) on the metrics
port (``metrics``), so the check needs STAGERUNNER_METRICS_PORT: without it there is
nothing to ask, and the check fails, saying so (a HEALTHCHECK that always passed would
hide a node that is stuck). Exit codes follow Docker's: 0 healthy, 1 anything else
(Docker reserves 2). Stdlib only: it runs every few seconds.
"""

from __future__ import annotations

import urllib.error
import urllib.request

EXIT_HEALTHY, EXIT_UNHEALTHY = 0, 1
TIMEOUT_S = 3.0
NO_PORT = ("no STAGERUNNER_METRICS_PORT: the node serves /healthz and /readyz on the metrics "
           "port; set it (the image sets 9464) to use the healthcheck")


def probe_host(bind_host: str) -> str:
    """Where to reach a server bound to `bind_host` from this machine."""
    if bind_host in ("", "0.0.0.0"):
        return "127.0.0.1"
    if bind_host == "::":
        return "[::1]"
    return f"[{bind_host}]" if ":" in bind_host else bind_host


def check(host: str, port: int | None, *, ready: bool = False,
          timeout: float = TIMEOUT_S) -> tuple[int, str]:
    """(exit code, one line saying why)."""
    if port is None:
        return EXIT_UNHEALTHY, NO_PORT
    path = "/readyz" if ready else "/healthz"
    url = f"http://{probe_host(host)}:{port}{path}"
    try:
        with urllib.request.urlopen(url, timeout=timeout) as answer:  # noqa: S310 (our own URL)
            return EXIT_HEALTHY, f"{path}: {answer.read().decode(errors='replace').strip()}"
    except urllib.error.HTTPError as exc:
        body = exc.read().decode(errors="replace").strip()
        return EXIT_UNHEALTHY, f"{path}: {exc.code} {body}"
    except (OSError, ValueError) as exc:
        return EXIT_UNHEALTHY, f"{path}: no answer from {url}: {exc}"
