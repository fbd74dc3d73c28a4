"""Page times of the dashboard on a million tasks.

    python -m stagerunner_tools.bench_web [--dsn ADMIN_DSN] [--rows N] [--runs N]

Creates its own database on the admin DSN, bulk-loads N tasks (bench_web_seed.sql: a week
of a realistic mix, ids growing with enqueue time), then builds each page through
``Dashboard.handle`` (the same query functions and templates the server uses, without the
socket) and prints the median, min and max over --runs builds of each, interleaved. Drops
the database at the end. The budget is 100 ms a page.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from importlib import resources
from urllib.parse import parse_qsl, urlsplit


from stagerunner import config, store
from stagerunner_tools import dbs
from stagerunner.web.app import Dashboard, Request
from stagerunner.web.server import Pool

ADMIN_DSN = dbs.DEFAULT_ADMIN_DSN
BUDGET_MS = 100.0


def pages(hi: int, failed_id: int) -> list[tuple[str, str]]:
    """(what, URL) of every page measured; `hi` is the newest id."""
    day = time.strftime("%Y-%m-%dT%H:%M", time.gmtime(time.time() - 3 * 86400))
    next_day = time.strftime("%Y-%m-%dT%H:%M", time.gmtime(time.time() - 2 * 86400))
    return [
        ("overview", "/"),
        ("tasks: first page", "/tasks"),
        ("tasks: deep keyset page (id < hi - 500k)", f"/tasks?before={hi - 500_000}"),
        ("filter: status=failed", "/tasks?status=failed"),
        ("filter: status=cancelled (0.5%)", "/tasks?status=cancelled"),
        ("filter: status=running (40 rows)", "/tasks?status=running"),
        ("filter: status=waiting", "/tasks?status=waiting"),
        ("filter: queue=webhooks", "/tasks?queue=webhooks"),
        ("filter: name contains fetch_rates", "/tasks?name=fetch_rates"),
        ("filter: name matching nothing (worst)", "/tasks?name=no-such-task"),
        ("filter: one day, 2-3 days ago", f"/tasks?since={day}&until={next_day}"),
        ("filter: failed + queue + name + day", f"/tasks?status=failed&queue=mail&name=send&since={day}"),
        ("search: text in args/errors (hits)", "/tasks?q=refused"),
        ("search: text matching nothing (worst)", "/tasks?q=no-such-text"),
        ("search: by id", f"/tasks?q=%23{failed_id}"),
        ("task detail (failed, traceback)", f"/tasks/{failed_id}"),
        ("runtimes: last hour", "/runtimes"),
        ("runtimes: last 24 h", "/runtimes?window=24h"),
        ("cron", "/cron"),
    ]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bench_web", description=__doc__.split("\n\n")[0])
    parser.add_argument("--dsn", default=ADMIN_DSN, help="admin DSN of a server we may CREATE DATABASE on")
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--runs", type=int, default=7)
    args = parser.parse_args(argv)
    with dbs.fresh_database(args.dsn, "sr_bench_web", schema=True) as dsn:
        started = time.monotonic()
        with store.connect(dsn) as conn:
            conn.execute(seed_sql("bench_web_seed"), {"rows": args.rows, "backlog": 2000})
            conn.execute(seed_sql("bench_web_nodes"))
            conn.execute("VACUUM ANALYZE stagerunner.tasks")
            hi = conn.execute("SELECT max(id) FROM stagerunner.tasks").fetchone()[0]
            failed_id = conn.execute("SELECT max(id) FROM stagerunner.tasks WHERE status = 'error'").fetchone()[0]
        print(f"loaded {args.rows:,} tasks in {time.monotonic() - started:.0f} s", file=sys.stderr)
        results = measure(dsn, pages(hi, failed_id), args.runs)
    print_table(results, args.rows, args.runs)
    return 0 if all(statistics.median(times) <= BUDGET_MS for _, times, _ in results) else 1


def measure(dsn: str, targets: list[tuple[str, str]], runs: int) -> list[tuple[str, list[float], int]]:
    settings = config.load({}, database_url=dsn)
    pool = Pool(dsn)
    app = Dashboard(settings, pool.connection)
    times: dict[str, list[float]] = {what: [] for what, _ in targets}
    sizes: dict[str, int] = {}
    for url_what in [("warm-up", url) for _, url in targets]:
        app.handle(request(url_what[1]))
    for _ in range(runs):  # interleaved: a page's runs spread over the whole measurement
        for what, url in targets:
            began = time.perf_counter()
            response = app.handle(request(url))
            times[what].append((time.perf_counter() - began) * 1000)
            assert response.status in (200, 303), (what, response.status)
            sizes[what] = response.body.count(b"<tr")
    pool.close()
    return [(what, times[what], sizes[what]) for what, _ in targets]


def request(url: str) -> Request:
    parts = urlsplit(url)
    return Request("GET", parts.path, parts.query, dict(parse_qsl(parts.query)), {}, {"host": "127.0.0.1"}, {})


def print_table(results: list[tuple[str, list[float], int]], rows: int, runs: int) -> None:
    print(f"dashboard pages on {rows:,} tasks: median (min-max) of {runs} builds, ms; budget {BUDGET_MS:g} ms")
    print(f"{'page':<44} {'median':>8} {'min':>8} {'max':>8} {'table rows':>11}")
    for what, times, size in results:
        flag = "" if statistics.median(times) <= BUDGET_MS else "  OVER BUDGET"
        print(f"{what:<44} {statistics.median(times):8.1f} {min(times):8.1f} {max(times):8.1f} {size:11d}{flag}")


def seed_sql(name: str) -> bytes:
    return resources.files("stagerunner_tools").joinpath(f"{name}.sql").read_bytes()


if __name__ == "__main__":
    sys.exit(main())
