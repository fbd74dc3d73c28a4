"""Producer stage: the only stage that talks to PostgreSQL for work.

    supervisor ══control══ producer ══pipes══ consumer 0 … N      (``control``, ``dispatcher``)
                               └─ link: 2 work + LISTEN connections  (``link``)

One ``step`` blocks in one ``wait`` over the control pipe, the consumer pipes and the
LISTEN socket, with a timeout from the earliest timer (``wakeups``). Then it claims at
most the outstanding credits of each queue worth claiming for, dispatches, writes the
outcomes beside the claim (``completer``), and runs the periodic services (``maintenance``).

Losing the database is normal weather: outcomes stay buffered, the link reconnects with
backoff, consumers keep enforcing deadlines. If the outage lasts long enough that other
nodes could consider us dead, the producer exits so the supervisor restarts the stages and
no job of ours runs on after its rescue.
"""

from __future__ import annotations

import logging
import os
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import psycopg

from stagerunner import catalog, context, faults, hooks, logs, procs, registry, signals, store
from stagerunner.completer import Completer
from stagerunner.demand import Claim
from stagerunner.control import Attached, Control
from stagerunner.dispatcher import Dispatcher
from stagerunner.link import Link
from stagerunner.metrics import Stats
from stagerunner.protocol import Outcome, Status, Stop
from stagerunner.maintenance import Maintenance
from stagerunner.rescuer import Rescuer
from stagerunner.scheduler import Periodic, Scheduler
from stagerunner.wakeups import Wakeups

log = logging.getLogger(__name__)

EXIT_FENCED = 75  # could not heartbeat for too long: restart us and our consumers
SILENCE_GRACE_S = 2.0
STOP_GRACE_S = 5.0
FINAL_FLUSH_S = 10.0


@dataclass(frozen=True, slots=True)
class ProducerConfig:
    dsn: str
    owner: str
    node: str
    queues: tuple[str, ...]
    poll_interval: float
    heartbeat_interval: float
    node_expiry: float
    max_job_timeout: float
    replaces: tuple[str, ...] = ()
    periodic: tuple[Periodic, ...] = ()
    log_level: str = "info"
    log_format: str = "text"
    fault: str = ""
    hook_modules: tuple[str, ...] = ()  # task modules to import for their on_lost hooks
    catalog_modules: tuple[str, ...] = ()  # a reload's, to publish: see catalog.reloaded
    listen_dsn: str | None = None  # a direct connection for LISTEN (transaction pooling)
    pooled: bool = False  # the DSN is a transaction-pooling PgBouncer


class Producer:
    def __init__(self, control: Any, config: ProducerConfig) -> None:
        self.control = Control(control)
        self.config = config
        self.dispatcher = Dispatcher(self._complete, self.control.replacing)
        self.ledger = self.dispatcher.ledger
        self.completer = Completer(config.owner)
        self.link = Link(config.dsn, config.node_expiry, config.listen_dsn, config.pooled)
        self.wakeups = Wakeups(config.queues, config.poll_interval, polling=self.link.polling)
        self.maintenance = Maintenance(
            Rescuer(config.owner, config.node, ",".join(config.queues), lease_s=config.node_expiry),
            Scheduler(config.periodic) if config.periodic else None,
            config.heartbeat_interval, catalog.reloaded(config.catalog_modules))
        self.stats = Stats()
        self.stopping = self.done = self.retired = False
        self.registered, self.stop_deadline = False, 0.0  # registered: our owner row is in
        self.told_held = 0  # the tasks held, as the supervisor last heard
        self.maintenance.start(self.wakeups, time.monotonic())
        self.wakeups.schedule("alive", 0.0)

    # The loop -----------------------------------------------------------------------

    def run(self) -> int:
        while not self.done:
            self.step(time.monotonic())
        return 0

    def step(self, now: float) -> None:
        self._ensure_connected(now)
        ready, writable = procs.wait_rw(self._waitables(), self.dispatcher.waiting_to_write(),
                                        timeout=self._timeout(now))
        for outbox in writable:
            self.dispatcher.flush(outbox)
        now = time.monotonic()
        for source in ready:
            if source is self.control.pipe:
                self._read_control()
            elif source == self.link.socket():
                self._drain_notifies()
            else:
                self.dispatcher.read(source, now)
        self.control.died(self.dispatcher.take_deaths())
        self.wakeups.tick(now)
        self._database_work(now)
        if self.link.fenced(procs.boottime()):  # a statement that came back late, a stall
            self._fence("the lease ran out while the producer was held up")
        self.control.replace(self.ledger.silent(now, self.config.max_job_timeout + SILENCE_GRACE_S))
        self._tell_alive(time.monotonic())
        if self.stopping:
            self._maybe_finish_stop(now)

    def _waitables(self) -> list[Any]:
        sources = [*self.dispatcher.pipes.values(), self.control.pipe, self.link.socket()]
        return [s for s in sources if s is not None and (s is not self.control.pipe
                                                        or self.control.open)]

    def _timeout(self, now: float) -> float:
        extra = [self.link.reconnect_at] if not self.link.up else []
        if self.link.up and (self.completer.pending or self.completer.releases):
            extra.append(self.completer.wake_at())
        if self.stopping:
            extra.append(now + 0.1)
        claim_now = self.link.up and not self.stopping and self._hungry()
        return self.wakeups.timeout(now, claim_now=claim_now, online=self.link.up, extra=extra)

    def _hungry(self) -> bool:
        """A claim is due, or the pauses must be read again first (a resume was notified)."""
        w = self.wakeups
        return bool(w.wanted and not w.pauses_known) or any(
            self.ledger.worth_claiming(q) for q in w.claimable())

    # Messages -------------------------------------------------------------------------

    def _read_control(self) -> None:
        match self.control.read():
            case Attached(slot=slot, queue=queue, pipe=pipe):
                self.dispatcher.attach(slot, queue, pipe, time.monotonic())
            case Stop():
                self._begin_stop()

    def _complete(self, slot: int, claim: Claim, outcome: Outcome) -> None:
        self.stats.observe(claim.task.queue, outcome.status, outcome.runtime_ms)
        if outcome.lost and self.config.hook_modules:
            hooks.call("lost", context.JobContext.from_task(claim.task))
        finish = self.completer.add(outcome, lost=claim.lost, max_attempts=claim.max_attempts,
                                    kills=claim.kills, consumer=slot)
        if finish.status == Status.WAITING:  # a retry: we know when it will be due
            self.wakeups.wake_at(time.monotonic() + finish.delay_s)

    def _drain_notifies(self) -> None:
        try:
            notes = self.link.notifies()
        except psycopg.Error as exc:
            self._disconnected(exc)
            return
        for channel, payload in notes:
            self.wakeups.notified(channel, payload)

    def _check_cancels(self, conn: psycopg.Connection[Any]) -> None:
        held = [c.task.id for c in self.ledger.held()]
        self.wakeups.cancels_known = True
        for task_id in store.find_cancelled(conn, owner=self.config.owner, ids=held):
            self.dispatcher.cancel(task_id)

    # Database work --------------------------------------------------------------------

    def _database_work(self, now: float) -> None:
        conn = self.link.conn
        if conn is None:
            return
        try:
            if not self.wakeups.cancels_known:  # a cancel notified, a poll or a reconnect
                self._check_cancels(conn)
            # A due claim and the outcome write run at once, each on its own connection.
            claim = None if self.stopping or not self._hungry() else lambda: self._claim(conn, now)
            self._write_back(conn, now, force=self.stopping, beside=claim)
            self._services(conn, now)
        except psycopg.Error as exc:
            self._disconnected(exc)

    def _services(self, conn: psycopg.Connection[Any], now: float) -> None:
        if self.wakeups.due("rescue", now):
            self._beat_and_rescue(conn, now)
        if not self.stopping:
            self.maintenance.run_due(conn, self.wakeups, now, self.config.queues)

    def _beat_and_rescue(self, conn: psycopg.Connection[Any], now: float) -> None:
        sent = procs.boottime()
        consumers, info = len(self.dispatcher.pipes), self.stats.summary(self.ledger.running())
        left = self.maintenance.beat(conn, self.wakeups, now, self.registered, consumers, info)
        if left is None:  # it ran out: our tasks may be someone else's by now
            self._fence("the lease ran out before this heartbeat")
            left = self.maintenance.beat(conn, self.wakeups, now, False, consumers, info)
        self.registered = True
        self.dispatcher.lease(self.link.leased(sent, left or 0.0))  # registering always leases
        self.stats.rescued += self.maintenance.rescue(conn)

    def _fence(self, why: str) -> None:
        """Past the lease: stop (the supervisor restarts the stages under a new owner) if
        we hold tasks, whose jobs the consumers' kill timers have stopped already."""
        if self.ledger.held():
            log.error("fenced; restarting so that no job of ours outlives its rescue",
                      extra={"event": "producer.fenced", "reason": why,
                             "held": len(self.ledger.held())})
            os._exit(EXIT_FENCED)

    def _write_back(self, conn: psycopg.Connection[Any], now: float, force: bool = False,
                    beside: Callable[[], object] | None = None) -> None:
        self.completer.release(self.dispatcher.take_releases())
        if self.completer.pending:  # a test's point: dying with outcomes not yet written
            faults.hit(self.config.fault, "producer", "before_flush")
        self.completer.write(conn, now, force, beside, self.link.second)

    def _claim(self, conn: psycopg.Connection[Any], now: float) -> None:
        """Claim for every queue worth claiming for."""
        w = self.wakeups
        if w.wanted and not w.pauses_known:
            w.set_paused(store.paused_queues(conn, queues=self.config.queues))
        for queue in w.claimable():
            limit = self.ledger.unmet(queue)
            if not self.ledger.worth_claiming(queue):
                continue
            claimed, next_due = store.claim_tasks(conn, owner=self.config.owner, queue=queue,
                                                  limit=limit)
            if claimed:
                faults.hit(self.config.fault, "producer", "after_claim")
            self.dispatcher.dispatch(queue, claimed, now)
            if claimed and not self.told_held:  # the watch is tighter on a producer holding
                self._tell_alive(time.monotonic(), force=True)  # tasks: before a query hangs
            if len(claimed) < limit:
                w.drained(queue)  # nothing more due for now; NOTIFY, poll or timer wakes it
                # counted from now, after the answer: never before the task is due
                w.due_in(next_due, time.monotonic())
            if claimed:
                faults.hit(self.config.fault, "producer", "after_dispatch")

    # Connecting -------------------------------------------------------------------------

    def _ensure_connected(self, now: float) -> None:
        if self.link.up:
            return
        if self.link.fenced(procs.boottime()):
            self._fence("the database was out of reach until the lease ran out")
        if not self.link.reconnect_due(now):
            return
        try:
            self._on_connected(self.link.connect())
        except psycopg.Error as exc:
            self._disconnected(exc)
            return
        log.info("database connected", extra={"event": "db.connected", "owner": self.config.owner})

    def _on_connected(self, conn: psycopg.Connection[Any]) -> None:
        if self.config.replaces and not self.retired:
            store.retire_nodes(conn, owners=self.config.replaces)
            self.retired = True
        self._beat_and_rescue(conn, time.monotonic())
        # Outcomes buffered through the outage first; a task no longer held whose outcome
        # is still unwritten (its row locked by someone) must not go back: it would run again.
        self._write_back(conn, time.monotonic(), force=True)
        self.completer.release_unheld(conn, [c.task for c in self.ledger.held()])
        self.wakeups.reconnected()

    def _disconnected(self, exc: Exception) -> None:
        self.stats.reconnects += 1
        self.link.lost(exc, buffered=len(self.completer.pending))

    # Silence, stop -------------------------------------------------------------------

    def _tell_alive(self, now: float, force: bool = False) -> None:
        """The supervisor kills a producer that stops saying this (stuck on a dead socket)."""
        if force or self.wakeups.due("alive", now):
            self.wakeups.schedule("alive", now + self.config.heartbeat_interval / 2)
            st = self.stats
            st.credits, st.consumers = self.ledger.credits(), len(self.dispatcher.pipes)
            st.consumer_deaths, st.connected = self.dispatcher.deaths, self.link.up
            self.told_held = len(self.ledger.held())
            self.control.alive(self.told_held, st)

    def _begin_stop(self) -> None:
        if self.stopping:
            return
        self.stopping = True
        self.stop_deadline = time.monotonic() + self.config.max_job_timeout + STOP_GRACE_S
        self.dispatcher.stop()

    def _maybe_finish_stop(self, now: float) -> None:
        if self.dispatcher.pipes and now < self.stop_deadline:
            return
        self.dispatcher.drop_all("did not stop in time")
        self._final_flush()
        self.done = True

    def _final_flush(self) -> None:
        until = time.monotonic() + FINAL_FLUSH_S / 2  # for rows locked elsewhere to come free

        def last_writes(conn: psycopg.Connection[Any]) -> None:
            self._write_back(conn, time.monotonic(), force=True)
            self.completer.settle(conn, until, self._tell_alive)
            store.delete_node(conn, owner=self.config.owner)

        if not self.link.last_chance(last_writes, FINAL_FLUSH_S):
            log.error("could not write back before exiting; a live node or the next start "
                      "will rescue these tasks", extra={"event": "producer.unflushed",
                                                        "buffered": len(self.completer.pending)})


def main(control: Any, config: ProducerConfig, parent: int, drop: tuple[int, ...] = ()) -> None:
    """Entry point of the producer process (`drop`: see ``spawn.start_producer``)."""
    procs.lead_private_session(parent)
    if drop:  # forked: the supervisor's objects holding these are never used here, and
        signals.forget()  # stay alive below us until we _exit (none closes a reused number)
        for fd in drop:
            procs.close_fd(fd)
    logs.set_title(f"stagerunner: producer node={config.node} owner={config.owner}")
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    logs.configure(config.log_level, config.log_format, "producer", config.node)
    registry.load(config.hook_modules)
    procs.exit_with(Producer(control, config).run, log, "producer")
