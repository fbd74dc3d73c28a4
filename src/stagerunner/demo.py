"""The tutorial's first half: a counter producer and N consumers on the same demand
machinery as the runner (``demand.Ledger`` / ``demand.Broadcast`` and the protocol's
``Demand`` / ``Batch`` / ``Outcome`` messages over pipes between OS processes).

Each consumer prints ``(pid, event, state)`` for every event it handles, like the
tutorial's ``IO.inspect {self(), event, state}``. With ``broadcast`` every consumer
sees every event (GenStage's BroadcastDispatcher), so numbers show up more than once.
"""

from __future__ import annotations

import os
import sys
from typing import Any

from stagerunner import procs
from stagerunner.demand import Broadcast, Claim, Ledger
from stagerunner.protocol import Batch, Demand, Outcome, Status, Stop, Task, decode, encode

STATE = "state_doesnt_matter"


def consumer_main(conn: Any, max_demand: int) -> None:
    """Ask for max_demand events; print each; re-ask for what was handled."""
    conn.send_bytes(encode(Demand(max_demand)))
    while True:
        try:
            message = decode(conn.recv_bytes())
        except EOFError:
            return
        match message:
            case Batch(tasks=events):
                for event in events:
                    # one write per line: atomic on a pipe, so consumers never interleave
                    os.write(1, f"({os.getpid()}, {event.id}, :{STATE})\n".encode())
                    conn.send_bytes(encode(Outcome(event.id, 0, Status.SUCCESS, 0.0, demand=1)))
            case Stop():
                return


def run_counter(*, consumers: int, broadcast: bool, events: int, start: int, max_demand: int,
                library: str = "multiprocessing") -> int:
    if consumers < 1 or max_demand < 1:
        print("stagerunner: --consumers and --max-demand must be at least 1", file=sys.stderr)
        return 2
    ctx = procs.context(library)
    pipes: dict[int, Any] = {}
    processes: list[Any] = []
    for i in range(consumers):
        ours, theirs = ctx.Pipe(duplex=True)
        process = ctx.Process(target=consumer_main, args=(theirs, max_demand), daemon=True)
        process.start()
        theirs.close()
        pipes[i], processes = ours, [*processes, process]
    try:
        _produce(pipes, broadcast, events, start)
    finally:
        for pipe in pipes.values():
            try:
                pipe.send_bytes(encode(Stop()))
            except OSError:
                pass
        for process in processes:
            process.join(timeout=5)
    return 0


def _produce(pipes: dict[int, Any], broadcast: bool, events: int, start: int) -> None:
    """handle_demand: emit state..state+demand-1 to whoever asked."""
    ledger, fanout = Ledger(), Broadcast[Task](pipes)
    for i in pipes:
        ledger.add(i, "counter")
    counter, emitted = start, 0
    subscribed: set[int] = set()
    while len(subscribed) < len(pipes):  # every consumer subscribes before the first event
        for pipe in procs.wait(list(pipes.values())):
            i = next(k for k, p in pipes.items() if p is pipe)
            _receive(i, decode(pipes[i].recv_bytes()), ledger, fanout)
            subscribed.add(i)
    while events == 0 or emitted < events:
        demand = fanout.unmet() if broadcast else ledger.unmet("counter")
        if events:
            demand = min(demand, events - emitted)
        batch = [Task(n, 0, "counter", "null") for n in range(counter, counter + demand)]
        counter, emitted = counter + demand, emitted + demand
        if broadcast:
            plan = fanout.assign(batch)
        else:
            claims = ledger.assign("counter", [Claim(t) for t in batch])[0]
            plan = {i: [c.task for c in given] for i, given in claims.items()}
        for i, given in plan.items():
            if given:
                pipes[i].send_bytes(encode(Batch(tuple(given))))
        for pipe in procs.wait(list(pipes.values())):
            i = next(k for k, p in pipes.items() if p is pipe)
            _receive(i, decode(pipes[i].recv_bytes()), ledger, fanout)


def _receive(i: int, message: object, ledger: Ledger, fanout: Broadcast[Task]) -> None:
    match message:
        case Demand(n=n):
            ledger.ask(i, n)
            fanout.ask(i, n)
        case Outcome(task_id=event, demand=n):
            ledger.finished(i, event, 0)
            ledger.ask(i, n)
            fanout.ask(i, n)
