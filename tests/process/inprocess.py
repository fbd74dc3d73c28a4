"""A real consumer (``consumer.Consumer``) driven in this process through ``step``, over a
real pipe, with its real fork helper: the tests of job children run tasks exactly the way
a node does, with no second job path."""

from __future__ import annotations

import multiprocessing
import os
import socket
import struct
import time
from typing import Any

from stagerunner.consumer import Consumer, ConsumerConfig
from stagerunner.child import Limits
from stagerunner import procs
from stagerunner.protocol import Batch, Demand, Lease, Message, Outcome, Task, decode, encode


class InProcessConsumer:
    def __init__(self, limits: Limits, window: int = 1) -> None:
        self.pipe, theirs = multiprocessing.Pipe(duplex=True)
        # our end is read without blocking, a frame at a time, between the consumer's steps
        self.sock = socket.socket(fileno=os.dup(self.pipe.fileno()))
        self.buffer = bytearray()
        # the kill timer would SIGKILL this very process (pytest) if a step came late: far
        # backstops here; the kernel bound itself is tested on a real consumer process
        config = ConsumerConfig(slot=0, queue="default", limits=limits, window=window,
                                backstop_s=600.0)
        self.consumer = Consumer(theirs, config)
        self.consumer.start()
        assert self.next_message() == Demand(window)
        self.pipe.send_bytes(encode(Lease(procs.boottime() + 3600)))

    def next_message(self, limit: float = 30.0) -> Message:
        """Step the consumer until a whole message from it has arrived."""
        deadline = time.monotonic() + limit
        while (message := self._frame()) is None:
            assert time.monotonic() < deadline, "no message from the consumer"
            try:
                self.buffer += self.sock.recv(1 << 20, socket.MSG_DONTWAIT)
                continue
            except BlockingIOError:
                pass
            self.consumer.step(time.monotonic())
        return message

    def _frame(self) -> Message | None:
        if len(self.buffer) < 4:
            return None
        size = struct.unpack_from("!i", self.buffer)[0]
        if len(self.buffer) < 4 + size:
            return None
        data = bytes(self.buffer[4:4 + size])
        del self.buffer[:4 + size]
        return decode(data)

    def run(self, name: str, args: str = "[]", timeout: float = 1.0, limit: float = 30.0,
            task_id: int = 1) -> Outcome:
        """Hand the consumer one task and step it until its outcome comes back."""
        self.pipe.send_bytes(encode(Batch((Task(task_id, 1, name, args, timeout),))))
        outcome = self.next_message(limit)
        assert isinstance(outcome, Outcome)
        return outcome

    def close(self) -> None:
        self.consumer.close()
        self.sock.close()
        self.pipe.close()

    def __enter__(self) -> InProcessConsumer:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()
