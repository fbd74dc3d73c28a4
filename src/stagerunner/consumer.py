"""Consumer stage: asks for work, runs each task in a job child under its deadline,
reports the outcome. Holds no database connection and never imports psycopg.

    producer ══pipe══ consumer ══socket══ fork helper ──fork──> job child (one per job;
      Batch, Stop, Cancel ──>   <── Demand, Outcome, Bye            K with child reuse)

The job children are forked by the consumer's fork helper (``forker``), which keeps
their fork cheap; the consumer holds each child's pipes and pidfd and enforces its
deadline itself (``executor.Job`` says how a job ended).

Two bounds are the kernel's, not this loop's: while a job runs, a kill timer
(``procs.KillTimer``) SIGKILLs the consumer -- and so, through PDEATHSIG, its fork helper
and the job -- at the earlier of the node's lease (``Lease``: past it other nodes may
rescue the task) and the job's deadline plus a backstop. A consumer that is stopped,
frozen or starved of CPU therefore cannot let a job outlive either; its death is then a
lost run that the producer (or a rescuer) hands back. No job starts without a lease.

One ``step`` blocks in one ``select`` over the producer pipe, the fork helper's socket
and the running child's result pipe and pidfd, with the running job's deadline as the
timeout.
"""

from __future__ import annotations

import gc
import logging
import os
import select
import signal
import time
from dataclasses import dataclass
from typing import Any

from stagerunner import faults, forking, hooks, logs, procs, registry, stageserver
from stagerunner.child import Limits
from stagerunner.context import JobContext
from stagerunner.executor import ChildHandle, Ending, Job
from stagerunner.demand import Prefetched
from stagerunner.forker import Forker, ForkerGone
from stagerunner.protocol import (Batch, Bye, Cancel, Demand, Lease, Outcome, ProtocolError,
                                  Return, Status, Stop, decode, encode)

log = logging.getLogger(__name__)

BACKSTOP_S = 1.0
RETURN_AFTER_S = 0.2


@dataclass(frozen=True, slots=True)
class ConsumerConfig:
    slot: int
    queue: str
    limits: Limits
    node: str = ""
    log_level: str = "info"
    log_format: str = "text"
    fault: str = ""
    window: int = 2  # tasks held at once: the running one plus one prefetched
    return_after_s: float = RETURN_AFTER_S  # a job this old hands its prefetched tasks back
    backstop_s: float = BACKSTOP_S  # the kill timer fires this long after a job's deadline


class Consumer:
    def __init__(self, conn: Any, config: ConsumerConfig) -> None:
        self.conn = conn
        self.outbox = procs.Outbox(conn)
        self.config = config
        self.limits = config.limits
        self.queue = Prefetched()
        self.spare: ChildHandle | None = None  # the child that runs (or will run) the next job
        self.forker: Forker | None = None
        self.job: Job | None = None
        self.lease_until = 0.0  # CLOCK_BOOTTIME; no job starts past it
        self.kill_timer: procs.KillTimer | None = None
        self.backoff: tuple[float, float, float] | None = None  # the running task's policy
        self.stopping = False
        self.done = False

    # The loop -------------------------------------------------------------------

    def run(self) -> int:
        try:
            self.start()
            while not self.done:
                self.step(time.monotonic())
        except ForkerGone as exc:
            # its job children died with it; the supervisor restarts us and the producer
            # accounts for what we held, as for a consumer crash
            log.error("fork helper lost; stopping", extra={"event": "consumer.forker_lost",
                                                           "error": str(exc)})
            return 1
        finally:
            self._drain_outbox()
            self.close()
        return 0

    def start(self) -> None:
        """Start the fork helper, have the first child forked, and ask for work."""
        self.kill_timer = procs.KillTimer()
        c = self.config
        self.forker = Forker.start(self.limits, registry.resolver(self.limits.modules), f"c{c.slot}",
                                   f"stagerunner: forker {c.slot} queue={c.queue} node={c.node}")
        self.forker.request()
        self._send(Demand(c.window))

    def step(self, now: float) -> None:
        if self.job is None and not self.stopping:
            self._start_next(now)
        if self.job is None and self.stopping:
            self._send(Bye(self.queue.take_all()))
            self.done = True
            return
        forker = self._forker()
        fds = [self.conn.fileno(), forker.fileno()]
        wake = [forker.sweep_due(now)]  # monotonic times; None: nothing to wake for
        if self.job is not None:
            fds += self.job.fds()
            wake.append(self.job.deadline)
            if self.queue:
                wake.append(self.job.started + self.config.return_after_s)
        times = [t for t in wake if t is not None]
        timeout = max(0.0, min(times) - now) if times else None
        writing = [self.outbox.fileno()] if self.outbox.pending else []
        ready, writable, _ = select.select(fds, writing, [], timeout)
        if writable:
            self._flush()
        if forker.fileno() in ready:
            forker.pump()  # the child we asked for; or ForkerGone before we take work
        if self.conn.fileno() in ready:
            forker.announce()
            self._read_producer()
        if self.job is not None:
            self._check_job(ready, time.monotonic())
        if self.job is not None and self.queue:
            given = self.queue.give_back(time.monotonic() - self.job.started,
                                         self.config.return_after_s)
            if given:  # other consumers may be idle: never let these wait behind a long job
                self._send(Return(given))

    def _drain_outbox(self, timeout: float = 10.0) -> None:
        """Before leaving: what the producer has not read yet (a Bye, an outcome)."""
        deadline = time.monotonic() + timeout
        while self.outbox.pending and time.monotonic() < deadline:
            select.select([], [self.outbox.fileno()], [], deadline - time.monotonic())
            self._flush()

    def close(self) -> None:
        """Kill what is left: the spare child, the fork helper and any stray."""
        try:
            self._retire_child()
        except ForkerGone:
            pass
        if self.forker is not None:
            self.forker.close()  # it kills and reaps whatever it still has
        procs.kill_strays(set())

    # Producer messages ----------------------------------------------------------

    def _read_producer(self) -> None:
        try:
            while not self.done and self.conn.poll():
                self._handle(decode(self.conn.recv_bytes()))
        except (EOFError, OSError):
            log.warning("producer went away; stopping", extra={"event": "consumer.orphaned"})
            self._abandon()
        except ProtocolError as exc:
            log.error("undecodable message from producer", extra={"event": "consumer.protocol_error",
                                                                  "error": str(exc)})

    def _handle(self, message: object) -> None:
        match message:
            case Batch(tasks=tasks):
                held = len(self.queue) + (self.job is not None) + len(tasks)
                if held > self.config.window:
                    log.error("producer sent more tasks than asked for; running them anyway",
                              extra={"event": "consumer.excess_tasks", "held": held,
                                     "window": self.config.window})
                self.queue.add(tasks)
                faults.hit(self.config.fault, "consumer", "after_batch")
            case Stop():
                self.stopping = True
            case Cancel(task_id=task_id):
                self._cancel(task_id)
            case Lease(until=until):
                self.lease_until = until
                self._arm()
            case _:
                log.error("unexpected message", extra={"event": "consumer.protocol_error",
                                                       "message": repr(message)})

    def _cancel(self, task_id: int) -> None:
        if self.job is not None and self.job.task.id == task_id:
            outcome = self.job.cancelled(time.monotonic())
            self._retire_child()  # the group is SIGKILLed before we report
            self._finish(outcome, keep_child=False)
            return
        task = self.queue.remove(task_id)
        if task is not None:
            self._report(Outcome(task_id, task.attempt, Status.CANCELLED, 0.0,
                                 error="cancelled before it started"))

    def _abandon(self) -> None:
        if self.job is not None:
            self._retire_child()
            self.job = None
            self._arm()
        self.queue.take_all()
        self.done = True

    # Jobs -----------------------------------------------------------------------

    def _start_next(self, now: float) -> None:
        while self.queue and self.job is None and procs.boottime() < self.lease_until:
            task = self.queue.next()
            spec, refused = registry.admit(task.name, task.args, self.limits.modules)
            if spec is None:  # before any child: retrying cannot help
                self._report(Outcome(task.id, task.attempt, Status.ERROR, 0.0, error=refused,
                                     final=True))
                continue
            if self.spare is None:
                self.spare = self._forker().take()
            timeout = self.limits.deadline_for(task, spec.timeout)
            self.backoff = spec.backoff.wire() if spec.backoff else None
            self.job = Job(task, self.spare, now, now + timeout, timeout)
            self._arm()
            faults.hit(self.config.fault, "consumer", "before_job")
            self.spare.send(task, time.time() + timeout)
            if self.spare.jobs_sent >= self.limits.child_reuse:
                self._forker().request()  # the next job's child is forked while this one runs
            log.debug("task started", extra={"event": "task.started", "task_id": task.id,
                                             "attempt": task.attempt, "child": self.spare.pid})

    def _check_job(self, ready: list[int], now: float) -> None:
        job = self.job
        assert job is not None
        ending = job.check(ready, now)
        if ending is None:
            return
        if ending is Ending.REPLIED:
            outcome = job.outcome(ending, now)  # a reply stamped past the deadline: timeout
            keep = (job.child.jobs_sent < self.limits.child_reuse and job.child.broken is None
                    and not job.child.left_running  # what it left dies with its group
                    and outcome.status is not Status.TIMEOUT)  # a timeout's group is killed
        else:  # gone (reap it for its wait status), or expired (kill its group, then report)
            keep, status = False, self._retire_child(wait=ending is Ending.EXITED)
            outcome = job.outcome(ending, now, status or 0)
        self._finish(outcome, keep_child=keep)
        if outcome.status is Status.TIMEOUT and hooks.registered("timeout"):
            hooks.call("timeout", JobContext.from_task(job.task))

    def _arm(self) -> None:
        """The kill timer: while a job runs, at the lease's end or the deadline's backstop,
        whichever comes first; disarmed between jobs."""
        if self.kill_timer is None:
            return
        if self.job is None:
            self.kill_timer.arm(0)
            return
        deadline = procs.boottime() + (self.job.deadline - time.monotonic())
        self.kill_timer.arm(min(self.lease_until, deadline + self.config.backstop_s))

    def _finish(self, outcome: Outcome, keep_child: bool) -> None:
        self.job = None
        self._arm()
        # ask again for what went back; the task's own retry backoff is for the producer
        self._report(outcome, more=self.queue.job_ended(), backoff=self.backoff)
        if not keep_child:
            self._retire_child()  # done with it (if not killed already); the helper kills
        else:                     # strays as it reaps it
            self._forker().sweep(time.monotonic())  # a reused child lives on: its job's strays
        if self.spare is None and not self.stopping:
            self._forker().request()  # forked now, while the next task is on its way

    def _report(self, outcome: Outcome, more: int = 0,
                backoff: tuple[float, float, float] | None = None) -> None:
        self._send(outcome.carrying(0 if self.stopping else 1 + more, backoff))

    def _retire_child(self, wait: bool = False) -> int | None:
        """SIGKILL the spare child's group now; with `wait`, also learn its wait status."""
        if self.spare is None:
            return None
        child, self.spare = self.spare, None
        return self._forker().kill(child, wait=wait)

    def _forker(self) -> Forker:
        assert self.forker is not None, "start() starts the fork helper"
        return self.forker

    def _send(self, message: Demand | Outcome | Bye | Return) -> None:
        try:
            self.outbox.send(encode(message))
        except OSError:
            self._abandon()

    def _flush(self) -> None:
        try:
            self.outbox.flush()
        except OSError:
            self.outbox.pending.clear()
            self._abandon()


# Process entry ------------------------------------------------------------------------

def main(conn: Any, config: ConsumerConfig, parent: int, environment: dict[str, str]) -> None:
    """Entry point of a consumer process (forked by the fork server, ``stageserver``)."""
    os.setsid()  # our job children stay in this session, where the supervisor can find them
    # No PDEATHSIG here: when the supervisor dies the producer dies with it, our pipe
    # closes, and we kill our job's whole group on the way out (a SIGKILL would orphan
    # the job's grandchildren).
    if stageserver.orphaned(parent):
        os._exit(1)
    # before the environment is replaced: setproctitle needs the original environ block
    logs.set_title(f"stagerunner: consumer {config.slot} queue={config.queue} node={config.node}")
    procs.become_subreaper()
    os.environ.clear()
    os.environ.update(environment)  # jobs never see the runner's STAGERUNNER_* settings
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the supervisor decides when we stop
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    logs.configure(config.log_level, config.log_format, f"consumer-{config.slot}", config.node)
    forking.watch_hooks()  # before the task modules: which of them register at-fork hooks
    try:
        registry.load(config.limits.modules)
    except Exception:
        log.exception("could not import task modules", extra={"event": "consumer.import_failed"})
        os._exit(3)
    # Everything imported so far lives as long as we do: out of the collector's sight, a
    # full collection in a job child does not write (and so copy) every object's header.
    gc.freeze()
    procs.exit_with(Consumer(conn, config).run, log, "consumer")
