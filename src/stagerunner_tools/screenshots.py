"""Screenshots of the dashboard for the README, taken by headless Debian chromium.

    python -m stagerunner_tools.screenshots [--dsn ADMIN_DSN] [--out docs/screenshots]

Loads 200,000 tasks of the benchmark's realistic mix into a scratch database, serves the
dashboard (signed in, so the action buttons show) and saves overview.png, tasks.png,
task.png (a failed task with its tracebacks), runtimes.png and cron.png.
"""

from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

from stagerunner import store
from stagerunner_tools import dbs
from stagerunner_tools.bench_web import ADMIN_DSN, seed_sql

TOKEN = "screenshot-token-0123456789"
WIDTH = 1440


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="screenshots")
    parser.add_argument("--dsn", default=ADMIN_DSN)
    parser.add_argument("--out", default="docs/screenshots")
    parser.add_argument("--rows", type=int, default=200_000)
    args = parser.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    with dbs.fresh_database(args.dsn, "sr_screenshots", schema=True) as dsn:
        with store.connect(dsn) as conn:
            conn.execute(seed_sql("bench_web_seed"), {"rows": args.rows, "backlog": 200})
            conn.execute(seed_sql("bench_web_nodes"))
            conn.execute("VACUUM ANALYZE stagerunner.tasks")
            failed = conn.execute("SELECT max(id) FROM stagerunner.tasks WHERE status = 'error'").fetchone()[0]
        beating = threading.Event()
        threading.Thread(target=heartbeat, args=(dsn, beating), daemon=True).start()
        try:
            with serving(dsn) as url:
                shoot(url, out, {"overview": "/", "tasks": "/tasks?status=failed", "task": f"/tasks/{failed}",
                                 "runtimes": "/runtimes", "cron": "/cron"})
        finally:
            beating.set()
    return 0


def heartbeat(dsn: str, stop: threading.Event) -> None:
    """The seeded nodes keep beating (the dead one stays dead) while the pictures are taken."""
    with store.connect(dsn) as conn:
        while not stop.wait(0.5):
            conn.execute(seed_sql("shots_heartbeat"))


class serving:
    def __init__(self, dsn: str) -> None:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        env = {k: v for k, v in os.environ.items() if not k.startswith("STAGERUNNER_")}
        env.update(STAGERUNNER_DATABASE_URL=dsn, STAGERUNNER_WEB_PORT=str(self.port), STAGERUNNER_WEB_TOKEN=TOKEN,
                   STAGERUNNER_TASK_MODULES="stagerunner_tools.shot_tasks",
                   PYTHONPATH=os.pathsep.join(p for p in sys.path if p))
        self.proc = subprocess.Popen([sys.executable, "-m", "stagerunner", "web"], env=env)

    def __enter__(self) -> str:
        url = f"http://127.0.0.1:{self.port}"
        for _ in range(100):
            try:
                urllib.request.urlopen(url + "/healthz", timeout=2)
                return url
            except OSError:
                time.sleep(0.1)
        raise RuntimeError("the dashboard did not start")

    def __exit__(self, *exc: object) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=10)


def shoot(url: str, out: Path, pages: dict[str, str]) -> None:
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By

    options = webdriver.ChromeOptions()
    options.binary_location = "/usr/bin/chromium"
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--hide-scrollbars", f"--user-data-dir={tempfile.mkdtemp()}", f"--window-size={WIDTH},900"):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(executable_path="/usr/bin/chromedriver"), options=options)
    try:
        driver.get(url + "/login")
        driver.find_element(By.ID, "token").send_keys(TOKEN)
        driver.find_element(By.ID, "sign-in").click()
        time.sleep(0.5)
        for name, path in pages.items():
            driver.set_window_size(WIDTH, 900)
            driver.get(url + path)
            time.sleep(3.5)  # one live refresh, so the header shows it updating
            height = driver.execute_script("return document.documentElement.scrollHeight")
            driver.set_window_size(WIDTH, min(height, 1800))
            time.sleep(0.3)
            driver.save_screenshot(str(out / f"{name}.png"))
            print(f"{out / name}.png")
    finally:
        driver.quit()


if __name__ == "__main__":
    sys.exit(main())
