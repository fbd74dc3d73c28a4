"""The application side's pure parts: argument shapes, the retry policy with its jitter,
what a job child's reply may say, results' notifications, the registry's refusals."""

import random

import pytest

from stagerunner import arguments, registry, retry
from stagerunner.protocol import Batch, Outcome, Status, Task, decode, encode
from stagerunner.results import TaskFailed, TaskNotFound, ours, settled


def test_positional_and_keyword_arguments_pack_and_unpack():
    assert arguments.pack((1, 2), {}) == [1, 2]
    assert arguments.pack((), {"a": 1}) == {"a": 1}
    assert arguments.pack((1,), {"a": 2}) == {"*args": [1], "a": 2}
    for stored in ([1, 2], {"a": 1}, {"*args": [1], "a": 2}):
        assert arguments.pack(*arguments.unpack(stored)) == stored
    with pytest.raises(TypeError):
        arguments.unpack({"*args": "not a list"})
    with pytest.raises(TypeError):
        arguments.unpack("text")


def test_backoff_is_exponential_capped_and_jittered_deterministically():
    policy = retry.Backoff(base_s=1.0, max_s=10.0, jitter=0.5)
    assert [policy.delay(n, rand=lambda: 0.5) for n in (1, 2, 3, 4, 5)] == [1, 2, 4, 8, 10]
    assert policy.delay(1, rand=lambda: 0.0) == 0.5 and policy.delay(1, rand=lambda: 1.0) == 1.5
    rng = random.Random(7)
    spread = {round(retry.DEFAULT.delay(3, rand=rng.random), 6) for _ in range(20)}
    assert len(spread) > 10 and all(3.2 <= d <= 4.8 for d in spread)


def _failed(**fields):
    return Outcome(1, 2, Status.ERROR, 1.0, error="boom", **fields)


def test_decide_retries_discards_and_snoozes():
    half = lambda: 0.5  # noqa: E731
    assert retry.decide(_failed(), failures=2, max_attempts=3, rand=half) == retry.Decision(
        Status.WAITING, Status.ERROR, 2.0)
    assert retry.decide(_failed(retry=False), failures=1, max_attempts=3).status is Status.ERROR
    own = retry.decide(_failed(backoff=(0.1, 0.2, 0.0)), failures=3, max_attempts=5)
    assert own.delay_s == 0.2
    snoozed = retry.decide(_failed(snooze_s=30.0), failures=9, max_attempts=1)
    assert (snoozed.status, snoozed.delay_s, snoozed.refund) == (Status.WAITING, 30.0, 1)
    assert retry.decide(_failed(), failures=3, max_attempts=3).status is Status.ERROR


def test_the_child_classifies_exceptions_by_the_tasks_rules():
    assert retry.classify(ValueError(), (), ()) == {}
    assert retry.classify(ValueError(), (ConnectionError,), ()) == {"retry": False}
    assert retry.classify(ConnectionResetError(), (ConnectionError,), ()) == {}
    assert retry.classify(KeyError(), (), (LookupError,)) == {"retry": False}
    assert retry.classify(retry.Snooze(5), (), ()) == {"snooze": 5.0}
    with pytest.raises(ValueError):
        retry.Snooze(float("inf"))


def test_a_snooze_the_job_may_raise_is_one_the_node_honours():
    """Once, Snooze(2 days) was accepted in the job and dropped by the node (its cap was a
    day): the task ran again at once, on backoff, as a plain error."""
    for seconds in (0, 2 * 86400, retry.SNOOZE_MAX_S):
        said = retry.classify(retry.Snooze(seconds), (), ())
        assert retry.from_reply(said) == {"snooze_s": float(seconds)}
    with pytest.raises(ValueError, match="30 days"):
        retry.Snooze(retry.SNOOZE_MAX_S + 1)


def test_what_a_reply_says_about_retries_is_untrusted():
    assert retry.from_reply({"retry": False, "snooze": 3}) == {"retry": False, "snooze_s": 3.0}
    for hostile in ({"retry": "no"}, {"snooze": -1}, {"snooze": True}, {"snooze": 1e12},
                    {"snooze": "5"}, {"other": 1}):
        assert retry.from_reply(hostile) == {}


def test_new_message_fields_survive_the_wire_and_old_messages_still_decode():
    task = Task(1, 2, "m:f", "[]", 1.0, "q", 5, 1700000000.5)
    assert decode(encode(Batch((task,)))) == Batch((task,))
    outcome = _failed(retry=False, snooze_s=2.0, backoff=(1.0, 2.0, 0.1))
    assert decode(encode(outcome)) == outcome
    assert decode(b'["O",1,2,"error",1.0,null,"boom",0,false,false]') == _failed()
    assert decode(b'["B",[[1,1,"m:f","[]",null,"default"]]]').tasks[0].max_attempts == 1


def test_results_ignore_hostile_payloads_and_say_how_a_task_ended():
    assert ours(42, "42") and ours(42, " 42\n")
    for payload in ("", "x", "42x", "-42", "4" * 40, "41", "4 2", "١٢", "²", "4²"):
        assert not ours(42, payload)
    assert settled(1, [{"status": "success", "result": {"a": 1}}]) == (True, {"a": 1})
    assert settled(1, [{"status": "waiting"}]) == (False, None)
    with pytest.raises(TaskFailed) as failed:
        settled(1, [{"status": "error", "last_error": "Traceback ...\nValueError: no\n"}])
    assert (failed.value.status, str(failed.value)) == ("error", "task 1 ended error: ValueError: no")
    with pytest.raises(TaskNotFound):
        settled(1, [])


def test_things_that_cannot_be_tasks_are_refused_at_import_saying_why():
    async def agen():
        yield 1

    def gen():
        yield 1

    with pytest.raises(TypeError, match="async generator"):
        registry.register(agen, name="tests.unit.agen")
    with pytest.raises(TypeError, match="a generator"):
        registry.register(gen, name="tests.unit.gen")
    with pytest.raises(TypeError, match="has no importable name"):
        registry.register(lambda: None)
    with pytest.raises(TypeError, match="exception classes"):
        registry.register(_plain, name="tests.unit.plain",
                          retry_on=("ValueError",))


def _plain() -> None:
    pass


def test_a_tasks_timeout_above_the_cap_is_found():
    spec = registry.register(_plain, name="tests.unit.slow_plain", timeout=120)
    assert spec in registry.over_cap(["tests.unit"], 30.0)
    assert spec not in registry.over_cap(["tests.unit"], 120.0)
