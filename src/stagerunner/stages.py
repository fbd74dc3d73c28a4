"""What each stage is started with, worked out from the node's settings (pure): the
producer's and a consumer's configuration, and the periodic tasks the producer enqueues.
The supervisor starts the processes; this module only decides their arguments.

A node's consumers are launched before the supervisor imports the producer's side
(see ``spawn``), so ``producer`` and ``scheduler`` are imported only when asked for.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from stagerunner import hooks, registry
from stagerunner.child import Limits
from stagerunner.config import Settings
from stagerunner.consumer import ConsumerConfig

if TYPE_CHECKING:
    from stagerunner.producer import ProducerConfig
    from stagerunner.scheduler import Periodic


def periodic(settings: Settings) -> tuple[Periodic, ...]:
    """The @task(cron=...) tasks of the node's task modules."""
    from stagerunner.scheduler import Periodic

    return tuple(
        Periodic(spec.name, spec.cron or "", spec.queue, spec.priority,
                 spec.max_attempts or registry.MAX_ATTEMPTS_DEFAULT, spec.timeout)
        for spec in registry.periodic(settings.task_modules))


def producer_config(s: Settings, dsn: str, owner: str, replaces: tuple[str, ...],
                    cron: tuple[Periodic, ...], reload: bool = False) -> ProducerConfig:
    from stagerunner.producer import ProducerConfig

    return ProducerConfig(
        dsn=dsn, owner=owner, node=s.node_name,
        queues=tuple(sorted(s.queue_consumers())), poll_interval=s.poll_interval,
        heartbeat_interval=s.heartbeat_interval, node_expiry=s.node_expiry,
        max_job_timeout=s.max_job_timeout, replaces=replaces,
        periodic=cron, log_level=s.log_level, log_format=s.log_format,
        fault=s.fault, listen_dsn=s.listen_dsn(), pooled=s.pooled,
        # the producer imports the task modules only when one of them has a lost hook
        hook_modules=tuple(s.task_modules) if hooks.registered("lost") else (),
        catalog_modules=tuple(s.task_modules) if reload else ())


def consumer_config(s: Settings, slot: int, queue: str) -> ConsumerConfig:
    limits = Limits(job_timeout=s.job_timeout, max_job_timeout=s.max_job_timeout,
                    modules=tuple(s.task_modules), child_reuse=s.child_reuse,
                    memory_mb=s.job_memory_mb, result_max_bytes=s.result_max_bytes)
    return ConsumerConfig(slot=slot, queue=queue, limits=limits, node=s.node_name,
                          log_level=s.log_level, log_format=s.log_format, fault=s.fault,
                          window=s.window())


def consumer_configs(s: Settings) -> list[ConsumerConfig]:
    return [consumer_config(s, slot, queue) for slot, queue in slots(s)]


def slots(s: Settings) -> list[tuple[int, str]]:
    """Each consumer slot and its queue, in slot order."""
    queues = [queue for queue, n in sorted(s.queue_consumers().items()) for _ in range(n)]
    return list(enumerate(queues))
