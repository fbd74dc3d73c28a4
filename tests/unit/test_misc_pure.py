import io
import json
import logging
import sys

import pytest

from stagerunner import logs
from stagerunner.client import to_json
from stagerunner.errors import NotJSON
from stagerunner.logs import JsonFormatter, TextFormatter, redact
from stagerunner.restarts import EXPLAIN_S, RestartIntensity, Restarts


def test_restart_intensity_allows_bursts_up_to_the_limit_within_the_window():
    limit = RestartIntensity(limit=2, window=10.0)
    assert limit.allow(0.0) and limit.allow(1.0)
    assert not limit.allow(2.0)
    assert RestartIntensity(2, 10.0).allow(0.0)


def test_restart_intensity_forgets_restarts_outside_the_window():
    limit = RestartIntensity(limit=1, window=5.0)
    assert limit.allow(0.0)
    assert limit.allow(6.0)
    assert not limit.allow(7.0)


def test_consumer_deaths_count_whatever_order_the_word_and_the_reaping_come_in():
    budget = Restarts(limit=2, window=30.0)
    assert budget.explained(0, running=False, now=0.0)  # the producer's word came first
    assert budget.consumer_died(0, 0.1)  # counted now: 1
    assert budget.consumer_died(0, 0.2) and budget.consumer_died(0, 0.3)  # reaped twice,
    assert budget.explained(0, running=True, now=0.4)  # then explained: a job ran in one,
    assert budget.explained(0, running=False, now=0.5)  # not in the other: 2
    assert budget.consumer_died(0, 0.6)
    assert not budget.explained(0, running=False, now=0.7)  # 3: past the limit


def test_a_death_the_producer_never_explains_counts_after_a_while_and_a_job_never_does():
    budget = Restarts(limit=1, window=30.0)
    budget.consumer_died(3, 0.0)
    assert budget.overdue(EXPLAIN_S / 2) and budget.unexplained[3]  # still waiting
    assert budget.overdue(EXPLAIN_S + 0.1)  # counted: 1 of 1
    budget.consumer_died(3, 5.0)
    assert budget.explained(3, running=True, now=5.1)  # a job ran in it: never counted
    budget.consumer_died(3, 6.0)
    assert not budget.overdue(6.0 + EXPLAIN_S + 0.1)


@pytest.mark.parametrize("text", [
    "postgresql://user:hunter2@db.example/app",
    "host=db password=hunter2 user=x",
    "connection failed: postgres://u:hunter2@10.0.0.1:5432/x?sslmode=require",
    "password='hunter2'",
])
def test_passwords_are_redacted(text):
    assert "hunter2" not in redact(text)


@pytest.mark.parametrize("text", [
    "postgresql://u:hun@ter2@db/app",  # a stray '@' (the DSN does not parse)
    "postgresql://u:hun ter2@db/app failed",  # a stray space
    "connection to postgres://u:hun%ter2@db failed: x@y",
    "host=db password='hun\\'ter2' user=x",  # an escaped quote
    "postgresql://u:hun/ter2@db:5432/app",  # an unencoded '/'
    '{"msg": "postgresql://u:hun/ter2@db/app", "x": "a@b"}',  # one JSON line
])
def test_passwords_that_break_their_dsn_are_redacted_whole(text):
    assert "ter2" not in redact(text)


@pytest.mark.parametrize("text", ["PASSWORD=hunter2", "PassWord = hunter2", "paſſword=hunter2"])
def test_the_password_keyword_is_found_in_any_case(text):
    """A line is scanned only when it holds '://' or the keyword: in every case the
    pattern matches (its IGNORECASE folds the long s too)."""
    assert "hunter2" not in redact(text)


@pytest.mark.parametrize("formatter", [TextFormatter(), JsonFormatter()],
                         ids=["text", "json"])
def test_a_log_line_never_carries_a_password_from_its_message_fields_or_traceback(formatter):
    """What every log line goes through: the formatter redacts the whole line it built,
    whatever part of the record the password came in."""
    dsn = "postgresql://app:hunter2@db.example:5432/app"
    try:
        raise ConnectionError(f"cannot reach {dsn}")
    except ConnectionError:
        record = logging.getLogger("stagerunner.test").makeRecord(
            "stagerunner.test", logging.ERROR, __file__, 1, "connecting to %s failed", (dsn,),
            sys.exc_info(), extra={"event": "db.failed", "database": "host=db password=hunter2"})
    line = formatter.format(record)
    assert "hunter2" not in line
    assert "db.example" in line and "db.failed" in line and "ConnectionError" in line


def test_a_line_without_a_secret_comes_back_unchanged():
    line = "2026-11-30T00:45:11.268Z INFO task finished event=task.finished task_id=141"
    assert redact(line) is line


@pytest.fixture
def stagerunner_logging():
    """The stagerunner logger's set-up, restored after the test (configure replaces it)."""
    root = logging.getLogger("stagerunner")
    saved = (root.handlers[:], root.level, root.propagate)
    yield
    root.handlers[:], root.level, root.propagate = saved


def test_a_per_task_line_carries_its_fields_and_costs_nothing_below_the_level(
        monkeypatch, stagerunner_logging):
    stream = io.StringIO()
    monkeypatch.setattr("sys.stderr", stream)
    logs.configure("warning", "json", "producer", "n1")
    log = logging.getLogger("stagerunner.completer")

    class Untouchable(dict):
        def __iter__(self):
            raise AssertionError("the fields of a line below the level were read")

    logs.line(log, logging.INFO, "task finished", Untouchable(task_id=1))
    assert stream.getvalue() == ""
    logs.line(log, logging.WARNING, "task failed", {"event": "task.failed", "task_id": 7})
    doc = json.loads(stream.getvalue())
    assert (doc["level"], doc["msg"], doc["event"], doc["task_id"], doc["role"], doc["node"]) == (
        "warning", "task failed", "task.failed", 7, "producer", "n1")


def test_arguments_must_be_json():
    assert to_json("t", [1, "a", None, {"k": [True]}]) == '[1, "a", null, {"k": [true]}]'
    assert to_json("t", (1, 2)) == "[1, 2]"
    for bad in ([{1, 2}], [b"bytes"], [float("nan")], {"when": object()}, "a string"):
        with pytest.raises(NotJSON):
            to_json("t", bad)


def test_arguments_encode_as_json_dumps_does_and_one_that_contains_itself_is_refused():
    sample = [1, -0.0, 1e300, 2**70, "é\u0000\n", None, {"k": [True, {"n": 1.5}], "1": 2}]
    assert to_json("t", sample) == json.dumps(sample, allow_nan=False)
    loop: list = [1]
    loop.append(loop)
    with pytest.raises(NotJSON) as err:
        to_json("t", loop)
    assert "contain themselves" in str(err.value)
    assert to_json("t", [1]) == "[1]"  # the shared encoder is unharmed by that failure


def test_a_new_task_leads_with_the_staging_tables_columns_in_order():
    import re

    from stagerunner import inserts, store

    copy = store.sql_text("copy_staged_tasks")
    columns = [c.strip() for c in re.search(r"\(([^)]*)\)", copy).group(1).split(",")]
    assert columns[0] == "ord"
    assert list(inserts.NewTask._fields[:inserts._STAGED]) == columns[1:]


def test_the_runtime_histogram_is_cumulative_and_survives_the_wire():
    """One increment a run in the producer; the exposition's buckets count every run at or
    below their bound, +Inf all of them, as Prometheus's parser reads them."""
    from prometheus_client.parser import text_string_to_metric_families

    from stagerunner.metrics import Stats, render

    stats = Stats()
    for ms in (1, 5, 5.01, 20, 700, 1000, 45_000):  # 5 ms is on its bound: le="0.005"
        stats.observe("q", "success", ms)
    stats.observe("other", "error", 3)
    text = render(Stats.from_wire(json.loads(json.dumps(stats.to_wire()))), {}, [], [])
    [family] = [f for f in text_string_to_metric_families(text)
                if f.name == "stagerunner_job_runtime_seconds"]
    got = {(s.labels["queue"], s.labels.get("le")): s.value for s in family.samples
           if s.name.endswith("_bucket")}
    assert [got[("q", le)] for le in ("0.005", "0.01", "0.025", "0.5", "1.0", "30.0", "+Inf")] \
        == [2, 3, 4, 4, 6, 6, 7]
    assert got[("other", "0.005")] == 1 and got[("other", "+Inf")] == 1
    counts = {s.labels["queue"]: s.value for s in family.samples if s.name.endswith("_count")}
    assert counts == {"q": 7, "other": 1}


@pytest.mark.parametrize("formatter", [TextFormatter(), JsonFormatter()], ids=["text", "json"])
def test_a_log_line_carries_no_terminal_control_from_a_field(formatter):
    """A job's error text reaches a field of the node's log (its first line); an escape
    sequence in it would act on the terminal of whoever tails the log."""
    record = logging.getLogger("stagerunner.test").makeRecord(
        "stagerunner.test", logging.WARNING, __file__, 1, "task failed", (), None,
        extra={"event": "task.failed", "error": "Boom\x1b]0;owned\x07\x1b[2J\r\x9b"})
    line = formatter.format(record)
    assert not any(c in line for c in "\x1b\x07\r\x9b"), repr(line)
    assert "Boom" in line and "task.failed" in line
