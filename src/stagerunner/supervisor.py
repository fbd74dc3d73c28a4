"""Supervisor: starts the stages, watches them, restarts what dies, shuts down in order.

    supervisor
     ├─ producer         control pipe (Attach + passed fd, Stop, Cancel / Replace)
     └─ consumer 0 … N   one pipe each, whose other end is handed to the producer

Strategy (OTP's rest-for-one): a consumer that dies is restarted alone and the producer accounts
for what it held; a producer that dies takes its consumers with it and all are restarted, the
new producer retiring the old one's owner so its tasks are handed back at once. More than
``max_restarts`` restarts within ``restart_window`` seconds stops the node with exit code 1.

SIGTERM / SIGINT / SIGHUP only wake the loop (``signals``); it then asks the producer to stop:
no more claims, running jobs finish within their deadline, unstarted tasks go back to
``waiting``; the node exits 0, or on SIGHUP starts fresh stages (new task code). A reload whose
task modules do not import is refused (``spawn``).
"""

from __future__ import annotations

import logging
import os
import secrets
import signal
import threading
import time
from collections import Counter
from typing import Any

from stagerunner import metrics, procs, signals, spawn, stages
from stagerunner.config import Settings
from stagerunner.metrics import Stats
from stagerunner.producer import EXIT_FENCED
from stagerunner.protocol import Alive, Died, ProtocolError, Replace, Stop, decode, encode
from stagerunner.pruner import Pruner
from stagerunner.restarts import Restarts
from stagerunner.spawn import Launched, Stage, adopt, attach, start_consumer, start_producer
from stagerunner.watchdog import Watchdog

log = logging.getLogger(__name__)

EXIT_OK = 0
EXIT_FAILED = 1
STOP_GRACE_S = 15.0
SWEEP_S = 2.0
ORPHAN_WAIT_S = 1.0  # a consumer exited 0: its producer went away, or soon will (see _reap)


class Supervisor:
    def __init__(self, settings: Settings, dsn: str,
                 launched: dict[int, Launched] | None = None) -> None:
        self.settings = settings
        self.launched = {} if launched is None else launched  # attached on the first start
        self.dsn = dsn
        self.pooled = settings.pooled
        self.ctx = procs.context(settings.process_library)  # the producer's restarts
        self.server = procs.context(settings.process_library, "forkserver")  # consumers'
        self.slots = stages.slots(settings)
        self.producer: Stage | None = None
        self.control: Any = None
        self.owner = ""
        self.consumers: dict[int, Stage] = {}
        self.budget = Restarts(settings.max_restarts, settings.restart_window)
        self.stopping = False
        self.reloading = False  # SIGHUP: draining the stages to start them anew
        self.stop_deadline = 0.0
        self.signals = signals.Wakeup()
        self.exit_code: int | None = None
        self.sweep_until = 0.0  # after a stage died: look for orphans until then
        self.watchdog = Watchdog(settings.node_expiry)
        self.restarts: Counter[str] = Counter()
        self.stats = Stats()  # the producer's counters, from its last liveness report
        self.periodic = stages.periodic(settings)

    # Lifecycle ------------------------------------------------------------------------

    def run(self) -> int:
        procs.keep_memory_private()  # it holds the DSN (its title: ``cli``, before the launch)
        # A job's grandchild that escaped its group (setsid) and outlived its consumer is
        # reparented to us rather than to init, so _sweep_orphans can kill it.
        procs.become_subreaper()
        self.signals.install()
        self.start()
        while self.exit_code is None:
            self.step(time.monotonic())
        return self.exit_code

    def start(self) -> None:
        """Every stage, then the node's services. What belongs to the whole process (the
        subreaper, signal handlers) is run()'s, so tests can drive a supervisor
        in their own process with start(), step() and stop()."""
        # The metrics port is bound before any stage runs, the stages start while we have
        # no thread (the first producer is forked: _start_producer), then the threads.
        server = metrics.bound(self.settings, self.dsn, self._snapshot, self.pooled)
        self._start_stages(replaces=(), how="first")
        if server is not None:
            server.start()
        if self.settings.retention > 0 or self.settings.failed_retention > 0:
            Pruner(self.dsn, self.settings.retention, self.settings.failed_retention,
                   pooled=self.pooled).start()
        log.info("node started", extra={"event": "node.started", "node": self.settings.node_name,
                                        "owner": self.owner, "consumers": len(self.slots),
                                        "queues": ",".join(sorted(self.settings.queue_consumers()))})

    def step(self, now: float) -> None:
        waitables: list[Any] = [self.signals, self.control]
        waitables += [s.process.sentinel for s in self._stages()]
        sweeping = now < self.sweep_until
        timeout = 0.2 if sweeping else 1.0 if self.stopping else self.settings.heartbeat_interval
        if self.producer and not (self.stopping or self.reloading):
            timeout = self.watchdog.wait(now, timeout)
        ready = procs.wait(waitables, timeout=timeout)
        if self.signals in ready:
            self._on_signal()
        if self.control in ready:
            self._read_control()
        self._reap(now)
        if not self.budget.overdue(now):
            self._give_up()
        self._watch_producer(time.monotonic())
        if sweeping:
            self._sweep_orphans()
        if self.reloading and self.producer and time.monotonic() > self.stop_deadline:
            procs.kill_session(self.producer.process.pid)  # its exit restarts everything
        if self.stopping and time.monotonic() > self.stop_deadline:
            log.error("stages did not stop in time; killing them", extra={"event": "node.stop_timeout"})
            self._kill_all()
            self.exit_code = EXIT_FAILED

    def _snapshot(self) -> metrics.Snapshot:
        """For the metrics server's thread: the latest counters and the node's health (its
        stages are up and the producer's loop reported recently)."""
        recent = time.monotonic() - self.watchdog.alive_at < 2 * self.settings.heartbeat_interval + 1
        healthy = (self.producer is not None and recent
                   and len(self.consumers) == len(self.slots) and not self.stopping)
        return metrics.Snapshot(self.stats, dict(self.restarts), healthy,
                                healthy and self.stats.connected)

    def _stages(self) -> list[Stage]:
        return ([self.producer] if self.producer else []) + list(self.consumers.values())

    # Starting -------------------------------------------------------------------------

    def _start_stages(self, replaces: tuple[str, ...], how: str = "restart") -> None:
        self._start_producer(replaces, how)
        for slot, queue in self.slots:
            self._start_consumer(slot, queue)

    def _start_producer(self, replaces: tuple[str, ...], how: str = "restart") -> None:
        """`how`: "first", "restart" or "reload". On the first start the producer is forked
        from us: it needs what we imported (psycopg, the runtime); spawned, it spends ~0.2 s
        on its interpreter and imports first. Restarts and reloads spawn it: a reload imports
        the hook modules anew (the catalog is the new code's), and by then our threads run."""
        self.owner = f"{self.settings.node_name}/{os.getpid()}-{secrets.token_hex(3)}"
        config = stages.producer_config(self.settings, self.dsn, self.owner, replaces,
                                        self.periodic, reload=how == "reload")
        if how == "first" and threading.active_count() == 1:
            ctx = procs.context(self.settings.process_library, "fork")
            drop = (*self.signals.fds(), *(fd for c in self.launched.values() for fd in c.fds()))
            self.producer, self.control = start_producer(ctx, config, forked_drop=drop)
        else:
            self.producer, self.control = start_producer(self.ctx, config)
        self.watchdog.alive(time.monotonic(), 0)

    def _start_consumer(self, slot: int, queue: str) -> None:
        assert self.producer is not None
        if slot in self.launched:  # the first start: launched already (``spawn``)
            launched = self.launched.pop(slot)
            self.consumers[slot] = attach(launched, self.control, self.producer.process.pid)
            return
        config = stages.consumer_config(self.settings, slot, queue)
        self.consumers[slot] = start_consumer(self.server, config, self.settings.job_environment(),
                                              self.control, self.producer.process.pid)

    # Watching -------------------------------------------------------------------------

    def _read_control(self) -> None:
        try:
            message = decode(self.control.recv_bytes())
        except (EOFError, OSError):
            return  # the producer died; its sentinel tells the rest
        except ProtocolError as exc:
            log.error("undecodable message from producer", extra={"event": "node.protocol_error",
                                                                   "error": str(exc)})
            return
        if isinstance(message, Alive):
            self.watchdog.alive(time.monotonic(), message.held)
            self.stats = Stats.from_wire(message.stats)
            return
        if isinstance(message, Died):
            if not self.budget.explained(message.slot, message.running, time.monotonic()):
                self._give_up()
            return
        if isinstance(message, Replace) and message.slot in self.consumers:
            stage = self.consumers[message.slot]
            log.warning("killing an unresponsive consumer", extra={
                "event": "consumer.killed", "slot": message.slot, "reason": message.reason,
                "consumer_pid": stage.process.pid})
            procs.kill_session(stage.process.pid)

    def _reap(self, now: float) -> None:
        if self._producer_died(now, wait=False):
            return  # its death restarted every stage
        for slot, stage in list(self.consumers.items()):
            if stage.process.is_alive() or adopt(stage):  # adopted: its fork server died
                continue
            if stage.process.exitcode == 0 and self._producer_died(now, wait=True):
                return  # an orphan: the producer's death restarted it with the others
            stage.process.join()
            self.consumers.pop(slot, None)  # gone already if the restart limit stopped all
            procs.kill_session(stage.process.pid)  # its job children and their groups
            self.sweep_until = now + SWEEP_S
            self._consumer_exited(stage, now)

    def _producer_died(self, now: float, wait: bool) -> bool:
        """Handle the producer's death if it died. A consumer exits 0 on its own only once
        its producer went away, and the producer's exit (a SIGKILL, a fence) may become
        reapable a little after that consumer's: with `wait`, give it ORPHAN_WAIT_S, so
        that its death restarts everyone rather than counting as a consumer crash."""
        producer = self.producer
        if producer is None:
            return False
        if wait and not (self.stopping or self.reloading):
            producer.process.join(timeout=ORPHAN_WAIT_S)
        if producer.process.is_alive():
            return False
        producer.process.join()
        self._producer_exited(producer.process.exitcode, now)
        return True

    def _consumer_exited(self, stage: Stage, now: float) -> None:
        if self.stopping or self.reloading or self.exit_code is not None:
            return
        assert stage.slot is not None
        log.warning("consumer died; restarting it", extra={
            "event": "stage.restarted", "stage": "consumer", "slot": stage.slot,
            "exitcode": stage.process.exitcode})
        self.restarts["consumer"] += 1
        if not self.budget.consumer_died(stage.slot, now):  # counted once explained
            self._give_up()
            return
        self._start_consumer(stage.slot, stage.queue)

    def _producer_exited(self, code: int | None, now: float) -> None:
        self.producer = None
        if self.stopping and code == 0:
            self._kill_all()  # consumers have said goodbye; make sure no job is left
            self.exit_code = EXIT_OK
            log.info("node stopped", extra={"event": "node.stopped"})
            return
        if self.reloading:  # drained (or killed at the deadline): start anew
            self.reloading = False
            self._kill_all()
            self._start_stages(replaces=() if code == 0 else (self.owner,), how="reload")
            log.info("node reloaded", extra={"event": "node.reloaded", "owner": self.owner})
            return
        self.sweep_until = now + SWEEP_S
        reason = "fenced: lost the database" if code == EXIT_FENCED else f"exit code {code}"
        log.warning("producer died; restarting it and its consumers", extra={
            "event": "stage.restarted", "stage": "producer", "reason": reason})
        old = self.owner
        self._kill_all()
        if self.stopping:
            self.exit_code = EXIT_FAILED
            return
        if not self.budget.allow(now):
            self._give_up()
            return
        self.restarts["producer"] += 1
        self._start_stages(replaces=(old,))

    def _watch_producer(self, now: float) -> None:
        """Kill a producer stuck outside its loop, with its consumers (``watchdog``)."""
        if self.producer is None or self.stopping or self.reloading:
            return
        silence = self.watchdog.silent(now)
        if silence is not None:
            log.error("producer stopped answering; killing it", extra={
                "event": "producer.unresponsive", "silent_s": round(silence, 1),
                "held": self.watchdog.held})
            procs.kill_session(self.producer.process.pid)

    def _sweep_orphans(self) -> None:
        """Kill and reap children of ours that are not stages and left our session: jobs'
        descendants that escaped with setsid and were reparented to us."""
        stages = {s.process.pid for s in self._stages()}
        own_session = os.getsid(0)
        strays = [pid for pid in procs.children_of(os.getpid())
                  if pid not in stages and procs.session_of(pid) not in (own_session, None)]
        # (the process library's own helper stays in our session)
        for pid in strays:
            log.warning("killed a job's escaped descendant", extra={
                "event": "job.orphan_killed", "orphan_pid": pid})
        procs.kill_and_reap(strays, keep=set())

    def _give_up(self) -> None:
        if self.exit_code is not None:
            return
        log.error("too many restarts; stopping the node", extra={
            "event": "node.restart_limit", "max_restarts": self.settings.max_restarts,
            "window_s": self.settings.restart_window})
        self._kill_all()
        self.exit_code = EXIT_FAILED

    def _kill_all(self) -> None:
        for stage in self._stages():
            procs.kill_session(stage.process.pid)
            stage.process.join(timeout=5)
        self.consumers.clear()
        self.producer = None

    # Signals --------------------------------------------------------------------------

    def _on_signal(self) -> None:
        sig = self.signals.read()
        if sig is not None and (sig != signals.RELOAD or spawn.reload_possible(self.settings)):
            self.stop(sig)

    def stop(self, sig: int = signal.SIGTERM) -> None:
        """Drain the stages, then exit 0 (SIGTERM, SIGINT) or start fresh ones (SIGHUP)."""
        if self.stopping or (sig == signals.RELOAD and self.reloading):
            return
        self.reloading, self.stopping = sig == signals.RELOAD, sig != signals.RELOAD
        self.stop_deadline = time.monotonic() + self.settings.max_job_timeout + STOP_GRACE_S
        message, event = signals.MEANING[signal.Signals(sig)]
        log.info(message, extra={"event": event, "signal": signal.Signals(sig).name})
        try:
            self.control.send_bytes(encode(Stop()))
        except OSError:
            pass

