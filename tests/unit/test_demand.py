from stagerunner.demand import Broadcast, Claim, Ledger
from stagerunner.protocol import Task


def task(i: int, attempt: int = 1) -> Claim:
    return Claim(Task(i, attempt, "tests.tasks:ok", "[]"))


def test_assign_gives_each_consumer_at_most_its_credit():
    ledger = Ledger()
    ledger.add(1, "default")
    ledger.add(2, "default")
    ledger.ask(1, 3)
    ledger.ask(2, 1)
    assert ledger.unmet("default") == 4
    plan, leftover = ledger.assign("default", [task(i) for i in range(5)])
    assert [len(plan[1]), len(plan[2]), len(leftover)] == [3, 1, 1]
    assert ledger.unmet("default") == 0


def test_assign_spreads_tasks_over_the_hungriest_consumers_first():
    ledger = Ledger()
    for slot in (1, 2, 3):
        ledger.add(slot, "default")
        ledger.ask(slot, 1)
    plan, leftover = ledger.assign("default", [task(1), task(2)])
    assert sorted(len(v) for v in plan.values()) == [1, 1] and not leftover
    assert ledger.unmet("default") == 1


def test_queues_are_counted_and_assigned_separately():
    ledger = Ledger()
    ledger.add(1, "default")
    ledger.add(2, "mail")
    ledger.ask(1, 2)
    ledger.ask(2, 1)
    assert (ledger.unmet("default"), ledger.unmet("mail")) == (2, 1)
    plan, leftover = ledger.assign("mail", [task(1), task(2)])
    assert plan == {2: [task(1)]} and leftover == [task(2)]
    assert ledger.unmet("default") == 2


def test_finished_forgets_only_the_reported_attempt():
    ledger = Ledger()
    ledger.add(1, "default")
    ledger.ask(1, 1)
    ledger.assign("default", [task(7, attempt=2)])
    assert ledger.finished(1, 7, attempt=1) is None
    assert ledger.finished(1, 7, attempt=2) == task(7, attempt=2)
    assert ledger.held() == []


def test_drop_splits_the_running_task_from_the_unstarted_ones():
    ledger = Ledger()
    ledger.add(1, "default")
    ledger.ask(1, 3)
    ledger.assign("default", [task(1), task(2), task(3)])
    running, unstarted = ledger.drop(1)
    assert running == task(1) and unstarted == [task(2), task(3)]
    assert ledger.unmet("default") == 0 and 1 not in ledger.slots


def test_drop_of_an_idle_consumer_returns_nothing_and_forgets_its_credits():
    ledger = Ledger()
    ledger.add(1, "default")
    ledger.ask(1, 5)
    assert ledger.drop(1) == (None, [])
    assert ledger.unmet("default") == 0


def test_take_back_returns_only_the_named_tasks():
    ledger = Ledger()
    ledger.add(1, "default")
    ledger.ask(1, 2)
    ledger.assign("default", [task(1), task(2)])
    assert ledger.take_back(1, [2]) == [task(2)]
    assert ledger.held() == [task(1)]


def test_silent_names_slots_holding_work_past_the_limit():
    ledger = Ledger()
    ledger.add(1, "default", now=0.0)
    ledger.add(2, "default", now=0.0)
    ledger.ask(1, 1, now=0.0)
    ledger.ask(2, 1, now=0.0)
    ledger.assign("default", [task(1)], now=10.0)
    assert ledger.silent(now=14.0, limit=5.0) == []
    assert ledger.silent(now=16.0, limit=5.0) == [1]  # slot 2 holds nothing: idle is fine


def test_negative_demand_is_refused():
    ledger = Ledger()
    ledger.add(1, "default")
    try:
        ledger.ask(1, -1)
    except ValueError:
        return
    raise AssertionError("negative demand accepted")


def test_broadcast_emits_only_what_every_consumer_can_take():
    fanout: Broadcast[int] = Broadcast([1, 2])
    fanout.ask(1, 3)
    fanout.ask(2, 1)
    assert fanout.unmet() == 1
    assert fanout.assign([10, 11, 12]) == {1: [10], 2: [10]}
    assert fanout.credits == {1: 2, 2: 0}


def test_claims_wait_to_batch_until_a_consumer_starves_or_half_the_window_is_free():
    ledger = Ledger()
    for slot in (1, 2):
        ledger.add(slot, "default")
        ledger.ask(slot, 2)
    assert ledger.worth_claiming("default")  # everyone is idle
    ledger.assign("default", [task(1), task(2), task(3), task(4)])
    assert not ledger.worth_claiming("default")  # nothing asked for
    first, second = ledger.slots[1].held
    ledger.finished(1, first.task.id, 1)
    ledger.ask(1, 1)
    assert not ledger.worth_claiming("default")  # slot 1 still has a task to run: batch up
    ledger.finished(2, ledger.slots[2].held[0].task.id, 1)
    ledger.ask(2, 1)
    assert ledger.worth_claiming("default")  # half of the window is free


def test_a_starving_consumer_is_served_at_once():
    ledger = Ledger()
    for slot in (1, 2, 3, 4):
        ledger.add(slot, "default")
        ledger.ask(slot, 2)
    ledger.assign("default", [task(i) for i in range(8)])
    for held in list(ledger.slots[1].held):
        ledger.finished(1, held.task.id, 1)
    ledger.ask(1, 2)  # slot 1 has nothing left to run: 2 of 8 free is enough
    assert ledger.worth_claiming("default")


def test_a_consumer_gives_back_what_waits_behind_a_long_job_and_asks_again_after_it():
    from stagerunner.demand import Prefetched

    held = Prefetched()
    held.add([task(1).task, task(2).task])
    assert held.give_back(running_for=0.1, after=0.2) == () and len(held) == 2
    assert held.give_back(running_for=0.3, after=0.2) == (1, 2) and len(held) == 0
    assert held.give_back(running_for=5.0, after=0.2) == ()  # nothing left to give
    assert held.job_ended() == 2 and held.job_ended() == 0
    held.add([task(3).task, task(4).task])
    assert held.remove(4) is not None and held.remove(4) is None and held.next().id == 3


def test_a_consumer_that_handed_tasks_back_gets_nothing_until_its_long_job_ends():
    """Else each task given to it would come back 0.2 s later, be released and claimed
    for it again: a loop of claims and releases for as long as it had credits."""
    ledger = Ledger()
    for slot in (1, 2):
        ledger.add(slot, "default")
    ledger.ask(1, 8)
    ledger.assign("default", [task(1), task(2)])  # 1 runs long, 2 waits behind it
    assert [c.task.id for c in ledger.handed_back(1, [2])] == [2]
    assert ledger.unmet("default") == 0 and not ledger.worth_claiming("default")
    assert ledger.assign("default", [task(3)]) == ({}, [task(3)])
    ledger.ask(2, 1)  # an idle consumer of the queue takes what came back
    assert ledger.worth_claiming("default")
    assert ledger.assign("default", [task(2)])[0] == {2: [task(2)]}
    assert ledger.finished(1, 1, 1) is not None  # the long job ended: its credits count again
    ledger.ask(1, 2)  # its own and the one it handed back
    assert ledger.unmet("default") == 8 and ledger.slots[1].credits == 8


def test_a_notify_of_star_wants_every_queue_served_and_names_only_those():
    from stagerunner.wakeups import Wakeups

    w = Wakeups(("default", "mail"), poll_interval=2.0)
    w.wanted.clear()
    w.notified("stagerunner_tasks", "other,mail")
    assert w.wanted == {"mail"}
    w.wanted.clear()
    w.notified("stagerunner_tasks", "*")  # an insert into more queues than a payload names
    assert w.wanted == {"default", "mail"}
