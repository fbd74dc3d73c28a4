import pytest

from stagerunner.protocol import (Attach, Batch, Bye, Cancel, Demand, Outcome, ProtocolError,
                                  Replace, Status, Stop, Task, decode, encode)

MESSAGES = [
    Demand(3),
    Outcome(1, 2, Status.SUCCESS, 1.5, result='{"a": 1}', demand=1),
    Outcome(1, 2, Status.ERROR, 0.0, error="Traceback…", lost=True, final=True),
    Batch((Task(1, 1, "m:f", "[1]", 0.5, "mail"), Task(2, 3, "m:g", "{}"))),
    Stop(),
    Bye((4, 5)),
    Cancel(9),
    Attach(3, "default", 1234),
    Replace(3, "silent"),
]


@pytest.mark.parametrize("message", MESSAGES, ids=lambda m: type(m).__name__)
def test_every_message_survives_the_wire(message):
    data = encode(message)
    assert isinstance(data, bytes)
    assert decode(data) == message


@pytest.mark.parametrize("data", [b"", b"not json", b'["X"]', b'["D", "three"]', b"{}"])
def test_garbage_is_a_protocol_error_not_a_crash(data):
    with pytest.raises(ProtocolError):
        decode(data)


def test_status_values_are_the_sql_labels():
    assert [s.value for s in Status] == ["waiting", "running", "success", "error", "timeout",
                                         "cancelled"]


def test_an_outcome_carrying_demand_keeps_every_other_field():
    """``Outcome.carrying`` is written out field by field (for speed): a field added to
    Outcome and forgotten there fails here."""
    import dataclasses

    values = {"task_id": 7, "attempt": 2, "status": Status.ERROR, "runtime_ms": 1.5,
              "result": "1", "error": "e", "demand": 0, "lost": True, "final": True,
              "suspect": True, "deadline_s": 0.3, "retry": False, "snooze_s": 2.0,
              "backoff": (1.0, 2.0, 0.1)}
    assert set(values) == {f.name for f in dataclasses.fields(Outcome)}
    o = Outcome(**values)
    assert o.carrying(3) == dataclasses.replace(o, demand=3)
    assert o.carrying(1, (5.0, 9.0, 0.0)) == dataclasses.replace(o, demand=1,
                                                                 backoff=(5.0, 9.0, 0.0))
