"""bin/chaos's checks and hostile payloads, without a node: a crash in a log is found and put
down to a hostile NOTIFY when it follows one; restarts a fault explains are not crashes."""

from __future__ import annotations

import json
import random

from stagerunner_tools import chaos_checks, chaos_faults
from stagerunner_tools.runs import Run

T0 = 1_800_000_000.0  # 2027-01-15T08:00:00Z


def line(t: float, event: str, **extra: object) -> str:
    whole = int(t)
    stamp = f"2027-01-15T08:{(whole - int(T0)) // 60:02d}:{(whole - int(T0)) % 60:02d}." \
            f"{round((t - whole) * 1000):03d}Z"
    return json.dumps({"ts": stamp, "level": "warning", "event": event, **extra})


def test_timestamps_parse_to_unix_time():
    assert chaos_checks.parse_ts("2027-01-15T08:00:01.250Z") == T0 + 1.25


def test_restarts_that_a_fault_explains_are_no_crashes():
    log = "\n".join([
        line(T0 + 1, "stage.restarted", stage="consumer", exitcode=-9),
        line(T0 + 2, "stage.restarted", stage="producer", reason="exit code -9"),
        line(T0 + 3, "stage.restarted", stage="producer", reason="fenced: lost the database"),
        line(T0 + 4, "consumer.forker_lost", error="gone"),
        line(T0 + 4.5, "stage.restarted", stage="consumer", exitcode=1),
    ])
    report = chaos_checks.check_logs({"n1": log}, notified_at=[T0 + 0.5, T0 + 4.2])
    assert report.restarts == 4
    assert report.crashes == [] and report.hostile == []


def test_a_crash_after_a_hostile_notify_is_a_hostile_crash():
    log = "\n".join([
        line(T0 + 10.4, "producer.crashed", exc="Traceback ... ValueError"),
        line(T0 + 10.5, "stage.restarted", stage="producer", reason="exit code 1"),
        line(T0 + 30, "stage.restarted", stage="consumer", exitcode=1),  # no forker_lost
        "Traceback (most recent call last):",
    ])
    report = chaos_checks.check_logs({"n1": log}, notified_at=[T0 + 10])
    assert len(report.crashes) == 4
    assert len(report.hostile) == 2 and all("n1" in c for c in report.hostile)


def row(status: str, **over: object) -> dict[str, object]:
    return {"status": status, "attempts": 1, "lost": 0, "max_attempts": 3, "error_head": None,
            **over}


def test_task_checks_count_lost_cancelled_and_overlapping_runs():
    rows = {1: row("success"), 2: row("running"), 3: row("cancelled"),
            4: row("success", attempts=2)}
    keys = {1: "a", 2: "b", 3: "c", 4: "d", 5: "e"}
    kinds = dict.fromkeys(keys, "ok")
    runs = {"a": [Run("a", 1, 0.0, 1.0, True)],
            "d": [Run("d", 2, 0.0, 1.0, True), Run("d", 3, 0.5, 2.0, True)]}
    problems: list[str] = []
    report = chaos_checks.check_tasks(rows, keys, kinds, runs, problems)
    assert (report.lost, report.cancelled, report.overlaps) == (2, 1, 1)  # 2 running, 5 gone
    assert report.reruns == 0 and report.wrong >= 1


def test_hostile_payloads_fit_a_notify():
    rng = random.Random(7)
    for _ in range(200):
        for channel, payload in chaos_faults.hostile_notes(rng, [11, 12]):
            assert channel in chaos_faults.CHANNELS
            assert len(payload.encode()) < 8000 and "\0" not in payload
