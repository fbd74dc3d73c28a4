"""The producer's side of the consumer pipes (GenStage's dispatcher): who is attached,
what each asked for and holds (``demand.Ledger``), sending batches, and what to do with
what comes back.

Outcomes go to ``on_outcome`` with the claim they answer; tasks that must go back to
``waiting`` unstarted (a consumer's ``Bye``, a dead consumer's prefetched tasks, a claim
the ledger could not place) collect in ``releases`` for the producer to write.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from stagerunner import procs
from stagerunner.demand import Claim, Ledger
from stagerunner.protocol import (Batch, Bye, Cancel, Demand, Lease, Outcome, ProtocolError,
                                  Return, Status, Stop, decode, encode)

log = logging.getLogger(__name__)

OnOutcome = Callable[[int, Claim, Outcome], None]  # (consumer slot, claim, outcome)


class Dispatcher:
    def __init__(self, on_outcome: OnOutcome, replacing: set[int] | None = None) -> None:
        self.ledger = Ledger()
        self.on_outcome = on_outcome
        self.replacing = replacing if replacing is not None else set()  # killed on our word
        self.pipes: dict[int, Any] = {}
        # what each pipe could not take yet: a consumer that is slow to read (or stopped)
        # never blocks the producer, and two big messages crossing never deadlock
        self.outboxes: dict[int, procs.Outbox] = {}
        self.releases: list[Claim] = []
        self.until = 0.0  # the lease every consumer holds (CLOCK_BOOTTIME)
        self.stopping = False
        self.deaths = 0  # consumers that went away while we were not stopping
        self.died: list[tuple[int, bool]] = []  # (slot, ran a job) for the supervisor

    def attach(self, slot: int, queue: str, pipe: Any, now: float) -> None:
        if slot in self.pipes:
            self.gone(slot, "replaced")
        self.ledger.add(slot, queue, now)
        self.pipes[slot] = pipe
        self.outboxes[slot] = procs.Outbox(pipe)
        if self.until:
            self.send(slot, Lease(self.until))
        if self.stopping:
            self.send(slot, Stop())

    def read(self, pipe: Any, now: float) -> None:
        """Everything a consumer's pipe has for us."""
        slot = next((s for s, p in self.pipes.items() if p is pipe), None)
        if slot is None:
            return
        try:
            while slot in self.pipes and pipe.poll():
                self._handle(slot, decode(pipe.recv_bytes()), now)
        except (EOFError, OSError):
            self.gone(slot, "its pipe closed")
        except ProtocolError as exc:
            log.error("undecodable message from consumer", extra={
                "event": "producer.protocol_error", "slot": slot, "error": str(exc)})

    def _handle(self, slot: int, message: object, now: float) -> None:
        match message:
            case Demand(n=n):
                self.ledger.ask(slot, n, now)
            case Outcome() as o:
                claim = self.ledger.finished(slot, o.task_id, o.attempt)
                self.ledger.ask(slot, o.demand, now)
                if claim is None:
                    log.error("outcome for a task this consumer does not hold", extra={
                        "event": "producer.excess_outcome", "slot": slot, "task_id": o.task_id})
                    return
                self.on_outcome(slot, claim, o)
            case Return(unstarted=ids):
                self.releases += self.ledger.handed_back(slot, ids)
            case Bye(unstarted=ids):
                self.releases += self.ledger.take_back(slot, ids)
                self._close(slot)
                running, rest = self.ledger.drop(slot)  # empty unless the consumer misbehaved
                self.releases += ([running] if running else []) + rest
            case _:
                log.error("unexpected message from consumer", extra={
                    "event": "producer.protocol_error", "slot": slot, "message": repr(message)})

    def gone(self, slot: int, why: str) -> None:
        """A consumer is no more: its prefetched tasks go back, the one it ran is lost."""
        self._close(slot)
        running, unstarted = self.ledger.drop(slot)
        self.releases += unstarted
        if running is not None:
            # its consumer died under it: the job may have done it -- unless we had that
            # consumer killed for going silent, or its lease ran out (its kill timer fired)
            t = running.task
            suspect = slot not in self.replacing and procs.boottime() < self.until
            self.on_outcome(slot, running, Outcome(t.id, t.attempt, Status.ERROR, 0.0, lost=True,
                                             suspect=suspect,
                                             error=f"lost: its consumer died while running it ({why})"))
        if not self.stopping:
            self.deaths += 1
            self.died.append((slot, running is not None))
            log.warning("consumer died; its tasks are handed back", extra={
                "event": "consumer.died", "slot": slot, "released": len(unstarted),
                "lost": int(running is not None)})

    def dispatch(self, queue: str, claimed: list[Claim], now: float) -> None:
        plan, leftover = self.ledger.assign(queue, claimed, now)
        for slot, claims in plan.items():
            self.send(slot, Batch(tuple(c.task for c in claims)))
        if leftover:  # cannot happen when the claim honoured the limit; never lose them
            log.error("claimed more than the consumers asked for", extra={
                "event": "producer.excess_claim", "count": len(leftover)})
            self.releases += leftover

    def lease(self, until: float) -> None:
        """Every consumer may run jobs until `until` (see ``link``)."""
        self.until = until
        for slot in list(self.pipes):
            self.send(slot, Lease(until))

    def cancel(self, task_id: int) -> None:
        slot = self.ledger.holder(task_id)
        if slot is not None:
            self.send(slot, Cancel(task_id))

    def stop(self) -> None:
        self.stopping = True
        for slot in list(self.pipes):
            self.send(slot, Stop())

    def drop_all(self, why: str) -> None:
        for slot in list(self.pipes):
            self.gone(slot, why)

    def send(self, slot: int, message: Batch | Stop | Cancel | Lease) -> None:
        outbox = self.outboxes.get(slot)
        if outbox is None:
            return
        try:
            outbox.send(encode(message))
        except OSError:
            self.gone(slot, "its pipe broke")

    def waiting_to_write(self) -> list[procs.Outbox]:
        return [o for o in self.outboxes.values() if o.pending]

    def flush(self, outbox: procs.Outbox) -> None:
        slot = next((s for s, o in self.outboxes.items() if o is outbox), None)
        if slot is not None:
            try:
                outbox.flush()
            except OSError:
                self.gone(slot, "its pipe broke")

    def _close(self, slot: int) -> None:
        pipe, outbox = self.pipes.pop(slot, None), self.outboxes.pop(slot, None)
        for end in (outbox, pipe):
            if end is not None:
                end.close()

    def take_deaths(self) -> list[tuple[int, bool]]:
        out, self.died = self.died, []
        return out

    def take_releases(self) -> list[Claim]:
        out, self.releases = self.releases, []
        return out

