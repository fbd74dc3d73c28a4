"""The producer's end of the supervisor's control pipe: consumers attached (their pipe
passed as a file descriptor), the order to stop, and what the producer owes the
supervisor: ``Alive`` with its counters every half heartbeat (or be killed as stuck), and
``Replace`` for a consumer that went silent past its deadline."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from stagerunner import procs
from stagerunner.metrics import Stats
from stagerunner.protocol import Alive, Attach, Died, Replace, Stop, decode, encode

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Attached:
    """A consumer to take on: its pipe, its slot and its queue."""

    pipe: Any
    slot: int
    queue: str


class Control:
    def __init__(self, pipe: Any) -> None:
        self.pipe = pipe
        self.open = True
        self.replacing: set[int] = set()

    def read(self) -> Attached | Stop | None:
        """The next order; Stop also when the supervisor went away."""
        try:
            message = decode(self.pipe.recv_bytes())
        except (EOFError, OSError):
            log.error("supervisor went away; stopping", extra={"event": "producer.orphaned"})
            self.open = False  # EOF stays readable: stop waiting on it
            return Stop()
        match message:
            case Attach(slot=slot, queue=queue, pid=pid):
                self.replacing.discard(slot)
                log.debug("consumer attached", extra={"event": "consumer.attached", "slot": slot,
                                                      "queue": queue, "consumer_pid": pid})
                return Attached(procs.Connection(procs.recv_handle(self.pipe)), slot, queue)
            case Stop():
                return message
        log.error("unexpected control message", extra={"event": "producer.protocol_error",
                                                       "message": repr(message)})
        return None

    def alive(self, held: int, stats: Stats) -> None:
        self._send(Alive(held, stats.to_wire()))

    def died(self, deaths: list[tuple[int, bool]]) -> None:
        """Tell the supervisor which consumers died with a job running in them."""
        for slot, running in deaths:
            self._send(Died(slot, running))

    def replace(self, slots: list[int]) -> None:
        """Ask for new consumers in these slots (once each until they are attached again)."""
        for slot in slots:
            if slot not in self.replacing and self.open:
                self.replacing.add(slot)
                log.warning("consumer stopped answering; asking for its replacement", extra={
                    "event": "consumer.silent", "slot": slot})
                self._send(Replace(slot, "silent past its job deadline"))

    def _send(self, message: Alive | Died | Replace) -> None:
        """To the supervisor while it listens; a broken pipe means it went away (the next
        read says Stop)."""
        if self.open:
            try:
                self.pipe.send_bytes(encode(message))
            except OSError:
                self.open = False
