"""The dashboard's reads against a real database, in the states the runtime leaves rows in."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest

from stagerunner.web import filters, queries, views
from tests.web.conftest import insert_row

pytestmark = [pytest.mark.db, pytest.mark.timeout(30)]


def ago(**delta: float) -> datetime:
    return datetime.now(timezone.utc) - timedelta(**delta)


def test_a_listing_walks_small_windows_to_fill_a_page_and_the_older_link_resumes(conn, monkeypatch):
    monkeypatch.setattr(filters, "SCAN_IDS", 7)
    ids = [insert_row(conn, name="app:x", status="error" if i % 5 == 0 else "success")["id"] for i in range(60)]
    f = filters.TaskFilter(status="error")
    page = views.listing(conn, f, limit=4, budget_s=60)
    wanted = [i for i in reversed(ids) if (i - ids[0]) % 5 == 0]
    assert [r["id"] for r in page.rows] == wanted[:4] and page.older == wanted[3]
    rest = views.listing(conn, filters.TaskFilter(status="error", before=page.older), limit=50, budget_s=60)
    assert [r["id"] for r in rest.rows] == wanted[4:] and rest.older is None
    out_of_time = views.listing(conn, f, limit=50, budget_s=0)
    assert out_of_time.older is not None and out_of_time.searched_to == out_of_time.older


def test_retry_matching_finds_every_failed_task_on_every_page(conn, monkeypatch):
    monkeypatch.setattr(filters, "SCAN_IDS", 10)
    ids = [insert_row(conn, name=f"app:{'a' if i % 2 else 'b'}", status=("error", "timeout", "success")[i % 3])["id"]
           for i in range(90)]
    found = views.matching_failed_ids(conn, filters.TaskFilter(name="app:a"), batch=4, cap=1000)
    expected = [i for i in reversed(ids) if (i - ids[0]) % 2 == 1 and (i - ids[0]) % 3 != 2]
    assert found == expected
    assert views.matching_failed_ids(conn, filters.TaskFilter(status="success"), batch=4, cap=1000) == []


def test_id_at_bisects_enqueue_times(conn):
    rows = [insert_row(conn, name="app:x", created_at=ago(hours=50 - i)) for i in range(50)]
    assert queries.id_at(conn, ago(hours=20, minutes=30)) == rows[30]["id"]
    assert queries.id_at(conn, ago(hours=100)) == rows[0]["id"]
    assert queries.id_at(conn, ago(hours=-1)) == rows[-1]["id"] + 1


def test_rows_the_runtime_wrote_without_the_new_columns_still_show(conn):
    old = insert_row(conn, name="app:x", status="timeout", attempts=1, claimed_by="n/1",
                     claimed_at=ago(seconds=3), finished_at=ago(seconds=1), timeout_s=2.0,
                     errors=[{"attempt": 1, "status": "timeout", "error": "killed", "at": "t"}])["id"]
    w = views.first_window(conn, filters.TaskFilter())
    assert w is not None
    [row] = queries.tasks_page(conn, filters.TaskFilter(), w, limit=5)
    assert row["runtime_ms"] is None and row["consumer"] is None and row["deadline_s"] is None
    [stats] = queries.runtimes(conn, window_s=3600, max_rows=100, job_timeout=1.0, max_job_timeout=30.0)
    assert stats["deadline_s"] == 2.0 and 1500 < stats["max_ms"] < 2500 and stats["histogram"][10] == 1
    detail = queries.task(conn, task_id=old)
    assert detail is not None and detail["node"] is None


def test_queue_counts_split_due_scheduled_running_and_the_last_hours_errors(conn):
    insert_row(conn, name="app:x", queue="mail")
    insert_row(conn, name="app:x", queue="mail", run_at=ago(minutes=-10))
    insert_row(conn, name="app:x", queue="mail", status="running", attempts=1, claimed_by="n/1")
    insert_row(conn, name="app:x", queue="mail", status="error", attempts=1, finished_at=ago(minutes=5))
    insert_row(conn, name="app:x", queue="mail", status="error", attempts=1, finished_at=ago(hours=2))
    insert_row(conn, "nodes", owner="n/1", node="n", host="h", pid=1, queues="default,mail",
               expires_at=ago(seconds=-30))
    insert_row(conn, "nodes", owner="gone/1", node="gone", host="h", pid=2, queues="old")
    rows = {r["queue"]: r for r in queries.queues(conn, window_s=3600)}
    assert set(rows) == {"default", "mail"} and rows["default"]["served"]
    mail = rows["mail"]
    assert (mail["due"], mail["scheduled"], mail["running"], mail["error"]) == (1, 1, 1, 1)
