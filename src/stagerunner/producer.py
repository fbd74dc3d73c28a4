"""Producer stage: the only stage that talks to PostgreSQL for work.

    supervisor ══control══ producer ══pipe══ consumer 0 … N
                 Attach+fd, Stop ──>   Batch, Stop, Cancel ──>
                 <── Replace             <── Demand, Outcome, Bye
                               │
                               ├─ work connection: claim, finish, release, beat, rescue
                               └─ LISTEN connection: NOTIFY stagerunner_tasks wakes us,
                                  NOTIFY stagerunner_cancel names tasks to kill

One ``step`` blocks in one ``wait`` over the control pipe, the consumer pipes and the
LISTEN socket, with a timeout from the earliest timer (fallback poll, next scheduled
task, heartbeat, reconnect). Then it reads messages into the ledger and completer,
flushes outcomes, and claims at most the outstanding credits of each queue.

Losing the database is normal weather: outcomes stay buffered, the producer
reconnects with backoff, and consumers keep enforcing deadlines. If the outage lasts
long enough that other nodes could consider us dead, the producer exits so the
supervisor restarts the stages and no job of ours runs on after its rescue.
"""

from __future__ import annotations

import logging
import os
import signal
import time
from dataclasses import dataclass
from typing import Any

import psycopg

from stagerunner import faults, logs, metrics, store
from stagerunner.completer import Completer
from stagerunner.demand import Ledger
from stagerunner.pruner import Pruner
from stagerunner.scheduler import Periodic, Scheduler
from stagerunner.procs import Connection, recv_handle, wait
from stagerunner.protocol import (Alive, Attach, Batch, Bye, Cancel, Demand, Outcome, ProtocolError,
                                  Replace, Status, Stop, Task, decode, encode)
from stagerunner.rescuer import Rescuer

log = logging.getLogger(__name__)

EXIT_FENCED = 75  # could not heartbeat for too long: restart us and our consumers
SILENCE_GRACE_S = 2.0
FLUSH_AFTER_S = 0.02  # outcomes wait at most this long for a batch to fill
FLUSH_BATCH = 64
STOP_GRACE_S = 5.0


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
    retention_s: float = 0.0
    periodic: tuple[Periodic, ...] = ()
    metrics_host: str = "127.0.0.1"
    metrics_port: int | None = None
    producer_restarts: int = 0
    log_level: str = "info"
    log_format: str = "text"
    fault: str = ""


@dataclass(slots=True)
class Meta:
    lost: int
    max_attempts: int


class Producer:
    def __init__(self, control: Any, config: ProducerConfig) -> None:
        self.control = control
        self.config = config
        self.ledger = Ledger()
        self.completer = Completer(config.owner)
        self.rescuer = Rescuer(config.owner, config.node, ",".join(config.queues),
                               config.heartbeat_interval, config.node_expiry)
        self.scheduler = Scheduler(config.periodic)
        self.pruner = Pruner(config.retention_s)
        self.metrics = metrics.Metrics()
        self.metrics.restarts["producer"] = config.producer_restarts
        self.metrics_server = (metrics.listen(config.metrics_host, config.metrics_port)
                               if config.metrics_port else None)
        self.table_cache: tuple[float, list[dict[str, Any]]] = (0.0, [])
        self.pipes: dict[int, Any] = {}
        self.meta: dict[int, Meta] = {}
        self.releases: list[Task] = []
        self.conn: psycopg.Connection[Any] | None = None
        self.listen: psycopg.Connection[Any] | None = None
        self.reconnect_at = 0.0
        self.backoff = 0.1
        self.wanted: set[str] = set(config.queues)  # queues that may have due work
        self.paused: set[str] = set()
        self.paused_checked = False  # re-read pauses after (re)connecting or a queue NOTIFY
        self.next_poll = 0.0
        self.next_due: float | None = None
        self.due_unknown = True  # something may have added scheduled rows since next_run_at
        self.replacing: set[int] = set()
        self.stopping = False
        self.stop_deadline = 0.0
        self.done = False
        self.retired = False
        self.control_open = True
        self.next_alive = 0.0

    # The loop -----------------------------------------------------------------------

    def run(self) -> int:
        while not self.done:
            self.step(time.monotonic())
        return 0

    def step(self, now: float) -> None:
        self._ensure_connected(now)
        ready = wait(self._waitables(), timeout=self._timeout(now))
        now = time.monotonic()
        for source in ready:
            if source is self.control:
                self._read_control()
            elif self.listen is not None and source is self.listen.pgconn.socket:
                self._drain_notifies()
            elif source is self.metrics_server:
                self._serve_metrics(now)
            else:
                self._read_consumer(source, now)
        if now >= self.next_poll:
            self.wanted = set(self.config.queues)
            self.next_poll = now + self.config.poll_interval
            self.due_unknown = True
        if self.next_due is not None and now >= self.next_due:
            self.wanted = set(self.config.queues)
            self.next_due = None
            self.due_unknown = True
        self._database_work(now)
        self._watch_silence(now)
        self._tell_alive(time.monotonic())
        if self.stopping:
            self._maybe_finish_stop(now)

    def _waitables(self) -> list[Any]:
        sources: list[Any] = [*self.pipes.values()]
        if self.control_open:
            sources.append(self.control)
        if self.listen is not None:
            sources.append(self.listen.pgconn.socket)
        if self.metrics_server is not None:
            sources.append(self.metrics_server)
        return sources

    def _timeout(self, now: float) -> float:
        if self.wanted and self.conn is not None and self._hungry() and not self.stopping:
            return 0.0
        timers = [self.next_poll, self.rescuer.next_at, self.next_alive]
        if self.scheduler.entries:
            timers.append(self.scheduler.next_at)
        if self.pruner.retention_s > 0:
            timers.append(self.pruner.next_at)
        if self.next_due is not None:
            timers.append(self.next_due)
        if self.conn is None:
            timers.append(self.reconnect_at)
        elif self.completer.pending:
            timers.append(self.completer.since + FLUSH_AFTER_S)
        if self.stopping:
            timers.append(now + 0.1)
        return max(0.0, min(timers) - now)

    def _hungry(self) -> bool:
        return any(self.ledger.worth_claiming(q) for q in self.wanted if q not in self.paused)

    # Messages -------------------------------------------------------------------------

    def _read_control(self) -> None:
        try:
            message = decode(self.control.recv_bytes())
        except (EOFError, OSError):
            log.error("supervisor went away; stopping", extra={"event": "producer.orphaned"})
            self.control_open = False  # EOF stays readable: stop waiting on it
            self._begin_stop()
            return
        match message:
            case Attach(slot=slot, queue=queue, pid=pid):
                fd = recv_handle(self.control)
                self._attach(slot, queue, Connection(fd), pid)
            case Stop():
                self._begin_stop()
            case _:
                log.error("unexpected control message", extra={"event": "producer.protocol_error",
                                                               "message": repr(message)})

    def _attach(self, slot: int, queue: str, pipe: Any, pid: int) -> None:
        if slot in self.pipes:
            self._consumer_gone(slot, "replaced")
        self.ledger.add(slot, queue, time.monotonic())
        self.pipes[slot] = pipe
        self.replacing.discard(slot)
        log.debug("consumer attached", extra={"event": "consumer.attached", "slot": slot,
                                              "queue": queue, "consumer_pid": pid})
        if self.stopping:
            self._send(slot, Stop())

    def _read_consumer(self, pipe: Any, now: float) -> None:
        slot = next((s for s, p in self.pipes.items() if p is pipe), None)
        if slot is None:
            return
        try:
            while slot in self.pipes and pipe.poll():
                self._handle(slot, decode(pipe.recv_bytes()), now)
        except (EOFError, OSError):
            self._consumer_gone(slot, "its pipe closed")
        except ProtocolError as exc:
            log.error("undecodable message from consumer", extra={
                "event": "producer.protocol_error", "slot": slot, "error": str(exc)})

    def _handle(self, slot: int, message: object, now: float) -> None:
        match message:
            case Demand(n=n):
                self.ledger.ask(slot, n, now)
            case Outcome() as o:
                task = self.ledger.finished(slot, o.task_id, o.attempt)
                self.ledger.ask(slot, o.demand, now)
                if task is None:
                    log.error("outcome for a task this consumer does not hold", extra={
                        "event": "producer.excess_outcome", "slot": slot, "task_id": o.task_id})
                    return
                self.metrics.observe(task.queue, o.status, o.runtime_ms)
                self._complete(o)
            case Bye(unstarted=ids):
                self.releases += self.ledger.take_back(slot, ids)
                self.pipes.pop(slot).close()
                running, rest = self.ledger.drop(slot)  # empty unless the consumer misbehaved
                self.releases += ([running] if running else []) + rest
            case _:
                log.error("unexpected message from consumer", extra={
                    "event": "producer.protocol_error", "slot": slot, "message": repr(message)})

    def _complete(self, outcome: Outcome) -> None:
        meta = self.meta.pop(outcome.task_id, Meta(0, 1))
        finish = self.completer.add(outcome, lost=meta.lost, max_attempts=meta.max_attempts)
        if finish.status == Status.WAITING:  # a retry: we know when it will be due
            self._wake_at(time.monotonic() + finish.delay_s)

    def _consumer_gone(self, slot: int, why: str) -> None:
        pipe = self.pipes.pop(slot, None)
        if pipe is not None:
            pipe.close()
        running, unstarted = self.ledger.drop(slot)
        self.releases += unstarted
        if running is not None:
            self._complete(Outcome(running.id, running.attempt, Status.ERROR, 0.0,
                                   error=f"lost: its consumer died while running it ({why})",
                                   lost=True))
        if not self.stopping:
            self.metrics.restarts["consumer"] += 1
            log.warning("consumer died; its tasks are handed back", extra={
                "event": "consumer.died", "slot": slot, "released": len(unstarted),
                "lost": int(running is not None)})

    def _cancel(self, task_id: int) -> None:
        slot = self.ledger.holder(task_id)
        if slot is not None:
            self._send(slot, Cancel(task_id))

    def _drain_notifies(self) -> None:
        assert self.listen is not None
        try:
            for note in self.listen.notifies(timeout=0):
                if note.channel == "stagerunner_cancel":
                    for task_id in note.payload.split(","):
                        self._cancel(int(task_id))
                    continue
                if note.channel == "stagerunner_queues":
                    self.paused_checked = False
                self.wanted.update(q for q in note.payload.split(",") if q in self.config.queues)
                self.due_unknown = True
        except psycopg.Error as exc:
            self._disconnected(exc)

    # Database work --------------------------------------------------------------------

    def _database_work(self, now: float) -> None:
        if self.conn is None:
            return
        try:
            # Claim and dispatch first: consumers wait on new work, nobody waits on outcomes.
            claimed = False
            if not self.stopping:
                claimed = self._claim(now)
            self._write_back(now, force=self.stopping or claimed)
            if self.rescuer.due(now):
                self.metrics.rescued += len(self.rescuer.step(self.conn, now))
            if not self.stopping:
                if self.scheduler.due(now) and self.scheduler.step(self.conn, now):
                    self.wanted = set(self.config.queues)
                if self.pruner.due(now):
                    self.pruner.step(self.conn, now)
        except psycopg.Error as exc:
            self._disconnected(exc)

    def _write_back(self, now: float, force: bool = False) -> None:
        assert self.conn is not None
        if self.releases:
            store.release_tasks(self.conn, owner=self.config.owner, tasks=self.releases)
            for task in self.releases:
                self.meta.pop(task.id, None)
            log.info("unstarted tasks handed back", extra={"event": "task.released",
                                                           "count": len(self.releases)})
            self.releases = []
        if force or self.completer.due(now, FLUSH_AFTER_S, FLUSH_BATCH):
            self.completer.flush(self.conn)

    def _claim(self, now: float) -> bool:
        """Claim for every queue worth claiming for; True if a claim statement ran."""
        assert self.conn is not None
        ran = False
        if self.wanted and not self.paused_checked:
            self.paused = store.paused_queues(self.conn, queues=self.config.queues)
            self.paused_checked = True
        for queue in sorted(self.wanted):
            limit = self.ledger.unmet(queue)
            if queue in self.paused or not self.ledger.worth_claiming(queue):
                continue
            claimed = store.claim_tasks(self.conn, owner=self.config.owner, queue=queue, limit=limit)
            ran = True
            if claimed:
                faults.hit(self.config.fault, "producer", "after_claim")
            self._dispatch(queue, claimed, now)
            if len(claimed) < limit:
                self.wanted.discard(queue)  # drained for now; NOTIFY, poll or timer wakes it
                if self.due_unknown:
                    self._schedule_next_due(now)
            if claimed:
                faults.hit(self.config.fault, "producer", "after_dispatch")
        return ran

    def _dispatch(self, queue: str, claimed: list[store.Claimed], now: float) -> None:
        for c in claimed:
            self.meta[c.task.id] = Meta(c.lost, c.max_attempts)
        plan, leftover = self.ledger.assign(queue, [c.task for c in claimed], now)
        for slot, tasks in plan.items():
            self._send(slot, Batch(tuple(tasks)))
        if leftover:  # cannot happen when the claim honoured the limit; never lose them
            log.error("claimed more than the consumers asked for", extra={
                "event": "producer.excess_claim", "count": len(leftover)})
            self.releases += leftover

    def _schedule_next_due(self, now: float) -> None:
        assert self.conn is not None
        seconds = store.next_run_at(self.conn, queues=self.config.queues)
        self.due_unknown = False
        if seconds is not None:
            self._wake_at(now + max(seconds, 0.0) + 0.001)

    def _wake_at(self, due: float) -> None:
        self.next_due = due if self.next_due is None else min(self.next_due, due)

    def _send(self, slot: int, message: Batch | Stop | Cancel) -> None:
        pipe = self.pipes.get(slot)
        if pipe is None:
            return
        try:
            pipe.send_bytes(encode(message))
        except OSError:
            self._consumer_gone(slot, "its pipe broke")

    # Connections ---------------------------------------------------------------------

    def _ensure_connected(self, now: float) -> None:
        if self.conn is not None:
            return
        if self.rescuer.fenced(now) and self.ledger.held():
            log.error("lost the database for longer than the heartbeat expiry; restarting "
                      "so that no job of ours outlives its rescue",
                      extra={"event": "producer.fenced"})
            os._exit(EXIT_FENCED)
        if now < self.reconnect_at:
            return
        try:
            self._connect()
        except psycopg.Error as exc:
            self._disconnected(exc)
            return
        log.info("database connected", extra={"event": "db.connected", "owner": self.config.owner})

    def _connect(self) -> None:
        conn = store.connect_guarded(self.config.dsn)
        listen = store.connect_guarded(self.config.dsn)
        listen.execute("LISTEN stagerunner_tasks")
        listen.execute("LISTEN stagerunner_cancel")
        listen.execute("LISTEN stagerunner_queues")
        self.conn, self.listen = conn, listen
        self.rescuer.next_at = 0.0
        if self.config.replaces and not self.retired:
            store.retire_nodes(conn, owners=self.config.replaces)
            self.retired = True
        self.rescuer.step(conn, time.monotonic())
        # Outcomes buffered through the outage first: those tasks are no longer held, and
        # handing them back before their outcome is written would run them again.
        self._write_back(time.monotonic(), force=True)
        released = store.release_unheld(conn, owner=self.config.owner,
                                        held=[t.id for t in self.ledger.held()])
        if released:
            log.warning("claims whose result never reached us were handed back", extra={
                "event": "task.released", "count": len(released)})
        self.wanted = set(self.config.queues)
        self.paused_checked = False
        self.backoff = 0.1

    def _disconnected(self, exc: Exception) -> None:
        for c in (self.conn, self.listen):
            if c is not None:
                try:
                    c.close()
                except Exception:
                    pass
        self.conn = self.listen = None
        self.metrics.reconnects += 1
        self.reconnect_at = time.monotonic() + self.backoff
        log.warning("database unavailable; retrying", extra={
            "event": "db.disconnected", "error": str(exc).strip()[:300],
            "retry_in_s": round(self.backoff, 2), "buffered": len(self.completer.pending)})
        self.backoff = min(self.backoff * 2, 5.0)

    def _serve_metrics(self, now: float) -> None:
        assert self.metrics_server is not None
        cached_at, table = self.table_cache
        if now - cached_at > 1.0 and self.conn is not None:
            try:
                table = store.count_tasks(self.conn)
                self.table_cache = (now, table)
            except psycopg.Error as exc:
                self._disconnected(exc)
        body = self.metrics.render(table=table, credits=self.ledger.credits(),
                                   consumers=len(self.pipes))
        metrics.answer(self.metrics_server, body)

    # Silence, stop -------------------------------------------------------------------

    def _watch_silence(self, now: float) -> None:
        limit = self.config.max_job_timeout + SILENCE_GRACE_S
        for slot in self.ledger.silent(now, limit):
            if slot not in self.replacing:
                self.replacing.add(slot)
                log.warning("consumer stopped answering; asking for its replacement", extra={
                    "event": "consumer.silent", "slot": slot})
                self.control.send_bytes(encode(Replace(slot, "silent past its job deadline")))

    def _tell_alive(self, now: float) -> None:
        """The supervisor kills a producer that stops saying this (stuck on a dead socket)."""
        if now >= self.next_alive and self.control_open:
            self.next_alive = now + self.config.heartbeat_interval / 2
            try:
                self.control.send_bytes(encode(Alive(len(self.ledger.held()))))
            except OSError:
                self.control_open = False

    def _begin_stop(self) -> None:
        if self.stopping:
            return
        self.stopping = True
        self.stop_deadline = time.monotonic() + self.config.max_job_timeout + STOP_GRACE_S
        for slot in list(self.pipes):
            self._send(slot, Stop())

    def _maybe_finish_stop(self, now: float) -> None:
        if self.pipes and now < self.stop_deadline:
            return
        for slot in list(self.pipes):
            self._consumer_gone(slot, "did not stop in time")
        self._final_flush()
        self.done = True

    def _final_flush(self) -> None:
        deadline = time.monotonic() + 10.0
        while time.monotonic() < deadline:
            if self.conn is None:
                self.reconnect_at = 0.0  # no backoff left to honour: we are leaving
                self._ensure_connected(time.monotonic())
                if self.conn is None:
                    time.sleep(0.1)  # bounded by the 10 s deadline; nothing else to wait for
                continue
            try:
                self._write_back(time.monotonic(), force=True)
                store.delete_node(self.conn, owner=self.config.owner)
                return
            except psycopg.Error as exc:
                self._disconnected(exc)
        log.error("could not write back before exiting; a live node or the next start "
                  "will rescue these tasks", extra={"event": "producer.unflushed",
                                                    "buffered": len(self.completer.pending)})


def main(control: Any, config: ProducerConfig, parent: int) -> None:
    """Entry point of the producer process (spawned by the supervisor)."""
    from stagerunner.executor import die_with_parent

    os.setsid()
    die_with_parent(parent)
    logs.set_title(f"stagerunner: producer node={config.node} owner={config.owner}")
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    logs.configure(config.log_level, config.log_format, "producer", config.node)
    try:
        code = Producer(control, config).run()
    except Exception:
        log.exception("producer crashed", extra={"event": "producer.crashed"})
        code = 1
    os._exit(code)
