"""Starting the stage processes: the supervisor decides when, ``stages`` with what.

A consumer's pipe has two ends: one goes to the consumer as it is spawned, the other to
the producer over the control pipe (``Attach``, then the descriptor itself), so the two
talk directly and the supervisor never relays work.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

from stagerunner import consumer, procs, producer
from stagerunner.consumer import ConsumerConfig
from stagerunner.producer import ProducerConfig
from stagerunner.protocol import Attach, encode


@dataclass
class Stage:
    process: Any
    slot: int | None = None  # None for the producer
    queue: str = ""


def start_producer(ctx: Any, config: ProducerConfig,
                   forked_drop: tuple[int, ...] | None = None) -> tuple[Stage, Any]:
    """The producer and our end of its control pipe. `forked_drop`: `ctx` forks (a node's
    first start), and the producer closes these fds of ours (our signal wake-up) and our
    end of its pipe. Other fds it inherits stay open: an object of ours that it might use
    (a log handler a task module opened) must not find its number reused for a socket."""
    ours, theirs = ctx.Pipe(duplex=True)
    drop = () if forked_drop is None else (*forked_drop, ours.fileno())
    process = ctx.Process(target=producer.main, args=(theirs, config, os.getpid(), drop),
                          name="stagerunner-producer", daemon=False)
    process.start()
    theirs.close()
    return Stage(process), ours


def start_consumer(ctx: Any, config: ConsumerConfig, environment: dict[str, str],
                   control: Any, producer_pid: int) -> Stage:
    theirs, producer_end = ctx.Pipe(duplex=True)
    process = ctx.Process(target=consumer.main,
                          args=(theirs, config, os.getpid(), environment),
                          name=f"stagerunner-consumer-{config.slot}", daemon=False)
    process.start()
    theirs.close()
    try:
        control.send_bytes(encode(Attach(config.slot, config.queue, process.pid)))
        procs.send_handle(control, producer_end.fileno(), producer_pid)
    except OSError:
        pass  # the producer is dying; its restart restarts this consumer too
    producer_end.close()
    return Stage(process, config.slot, config.queue)
