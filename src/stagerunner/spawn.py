"""Starting the stage processes: the supervisor decides when, ``stages`` with what.

A consumer's pipe has two ends: one goes to the consumer as it is forked, the other to
the producer over the control pipe (``Attach``, then the descriptor itself), so the two
talk directly and the supervisor never relays work.

Consumers are forked by the process library's fork server (``stageserver``), which has
imported their runtime; the producer is forked by the supervisor on a node's first
start, spawned at a restart. On the first start the consumers are launched as soon as
the settings are read (``cli``), and attached once the producer runs. This module does
not import psycopg (``producer`` is imported when one is started).
"""

from __future__ import annotations

import contextlib
import logging
import os
import select
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from stagerunner import consumer, procs, stageserver
from stagerunner.consumer import ConsumerConfig
from stagerunner.protocol import Attach, encode

if TYPE_CHECKING:
    from stagerunner.producer import ProducerConfig


log = logging.getLogger("stagerunner.supervisor")
IMPORT_CHECK_S = 60.0


@dataclass
class Stage:
    process: Any
    slot: int | None = None  # None for the producer
    queue: str = ""


def start_producer(ctx: Any, config: ProducerConfig,
                   forked_drop: tuple[int, ...] | None = None) -> tuple[Stage, Any]:
    """The producer and our end of its control pipe. `forked_drop`: `ctx` forks (a node's
    first start), and the producer closes these fds of ours (our signal wake-up, what
    ``Launched.fds`` names) and our end of its pipe. Other fds it inherits stay open: an
    object of ours that it might use (a log handler a task module opened) must not find
    its number reused for a socket."""
    from stagerunner import producer  # psycopg: see the module's docstring

    ours, theirs = ctx.Pipe(duplex=True)
    drop = () if forked_drop is None else (*forked_drop, ours.fileno())
    process = ctx.Process(target=producer.main, args=(theirs, config, os.getpid(), drop),
                          name="stagerunner-producer", daemon=False)
    process.start()
    theirs.close()
    return Stage(process), ours


@dataclass
class Launched:
    """A consumer started before its producer: its producer end waits here for ``attach``."""

    stage: Stage
    producer_end: Any

    def fds(self) -> tuple[int, ...]:
        """Ours that a producer forked before ``attach`` must not keep: the pipe end it
        gets its own copy of, and the consumer's death sentinel."""
        return (self.producer_end.fileno(), self.stage.process.sentinel)


def launch_consumers(ctx: Any, configs: Iterable[ConsumerConfig], environment: dict[str, str]
                     ) -> dict[int, Launched]:
    return {c.slot: launch_consumer(ctx, c, environment) for c in configs}


def launch_consumer(ctx: Any, config: ConsumerConfig, environment: dict[str, str]) -> Launched:
    theirs, producer_end = ctx.Pipe(duplex=True)
    process = ctx.Process(target=consumer.main,
                          args=(theirs, config, os.getpid(), environment),
                          name=f"stagerunner-consumer-{config.slot}", daemon=False)
    with stageserver.spawning_as_jobs(environment):  # a fork server started anew, too
        process.start()
    theirs.close()
    return Launched(Stage(process, config.slot, config.queue), producer_end)


def reload_possible(settings: Any) -> bool:
    """A reload whose task modules do not import would restart consumers that die at once
    until the restart limit stops the node: it is refused, and the running stages stay."""
    why = import_error(settings.task_modules, settings.job_environment())
    if why:
        log.error("reload refused: the task modules do not import; the node runs on",
                  extra={"event": "node.reload_refused", "error": why})
    return not why


def import_error(modules: Iterable[str], environment: dict[str, str]) -> str:
    """Why `modules` do not import in a fresh interpreter with the consumers' environment
    (its last line), or "" when they do: what a reload checks before it stops anything."""
    import subprocess
    import sys

    code = "import sys; from stagerunner import registry; registry.load(sys.argv[1:])"
    try:
        out = subprocess.run([sys.executable, "-c", code, *modules], env=environment,
                             capture_output=True, text=True, timeout=IMPORT_CHECK_S)
    except subprocess.TimeoutExpired:
        return f"importing them took over {IMPORT_CHECK_S:g} s"
    lines = out.stderr.strip().splitlines()
    return "" if out.returncode == 0 else (lines[-1] if lines else f"exit {out.returncode}")[:500]


def attach(launched: Launched, control: Any, producer_pid: int) -> Stage:
    """Hand the consumer's pipe to the producer (``Attach``, then the descriptor)."""
    stage = launched.stage
    assert stage.slot is not None  # a consumer's stage
    try:
        control.send_bytes(encode(Attach(stage.slot, stage.queue, stage.process.pid)))
        procs.send_handle(control, launched.producer_end.fileno(), producer_pid)
    except OSError:
        pass  # the producer is dying; its restart restarts this consumer too
    launched.producer_end.close()
    return stage


def start_consumer(ctx: Any, config: ConsumerConfig, environment: dict[str, str],
                   control: Any, producer_pid: int) -> Stage:
    return attach(launch_consumer(ctx, config, environment), control, producer_pid)


class Adopted:
    """A consumer that outlived its fork server: the library reports it dead (exit code
    255: its server's socket closed), but it runs on, now our child (we are a child
    subreaper: the kernel reparented it to us). Watched from then on through a pidfd,
    with the part of ``Process`` the supervisor uses."""

    def __init__(self, pid: int, pidfd: int) -> None:
        self.pid = pid
        self.sentinel = pidfd  # readable once it has exited
        self.exitcode: int | None = None

    def is_alive(self) -> bool:
        self.join(timeout=0)
        return self.exitcode is None

    def join(self, timeout: float | None = None) -> None:
        if self.exitcode is not None or not select.select([self.sentinel], [], [], timeout)[0]:
            return
        try:
            info = os.waitid(os.P_PIDFD, self.sentinel, os.WEXITED)
        except ChildProcessError:  # reaped by its server in its last moment
            info = None
        exited = info is not None and info.si_code == os.CLD_EXITED
        self.exitcode = (info.si_status if exited else -info.si_status) if info else 255
        os.close(self.sentinel)


def adopt(stage: Stage) -> bool:
    """Watch a consumer that the library reports dead but whose fork server died, not it
    (``Adopted``); False if it did die."""
    pid = stage.process.pid
    if stage.process.exitcode != 255 or isinstance(stage.process, Adopted):
        return False
    try:
        pidfd = os.pidfd_open(pid)
    except OSError:
        return False  # gone, and reaped: it did die
    with contextlib.suppress(ValueError):
        stage.process.close()  # the library's end of the dead server's socket
    stage.process = Adopted(pid, pidfd)
    log.warning("the consumers' fork server died; this consumer runs on", extra={
        "event": "consumer.adopted", "slot": stage.slot, "consumer_pid": pid})
    return True


def abandon(launched: dict[int, Launched]) -> None:
    """Kill consumers launched for a start that failed before their producer ran (no
    schema, no database). They hold no task and have said nothing worth hearing."""
    for item in launched.values():
        procs.kill_session(item.stage.process.pid)
        item.stage.process.join(timeout=5)
        item.producer_end.close()
    launched.clear()
