"""Usable CPUs: affinity capped by the cgroup quota (pure parsing over fixture files), and
the consumer default derived from it, clamped into range rather than refused."""

import logging
from pathlib import Path

import pytest

from stagerunner import cli, cpus
from stagerunner.config import CONSUMERS_MAX, derived_consumers, load

FIXTURES = Path(__file__).parent / "fixtures" / "cgroup"


@pytest.mark.parametrize("text, expected", [
    ("max 100000\n", None), ("150000 100000\n", 1.5), ("200000 100000", 2.0),
    ("50000 100000", 0.5), ("", None), ("garbage", None), ("0 100000", None)])
def test_cgroup_v2_cpu_max(text, expected):
    assert cpus.parse_cpu_max(text) == expected


@pytest.mark.parametrize("quota, period, expected", [
    ("-1\n", "100000\n", None), ("50000", "100000", 0.5), ("300000", "100000", 3.0),
    ("x", "100000", None), ("100000", "0", None)])
def test_cgroup_v1_cfs_quota(quota, period, expected):
    assert cpus.parse_cfs(quota, period) == expected


def test_proc_self_cgroup_names_the_v2_path_and_the_v1_cpu_controller():
    text = "12:memory:/docker/abc\n4:cpu,cpuacct:/docker/abc\n0::/system.slice/x.scope\n"
    assert cpus.parse_proc_cgroup(text) == ("/system.slice/x.scope", "/docker/abc")
    assert cpus.parse_proc_cgroup("0::/\n") == ("/", None)


@pytest.mark.parametrize("case, expected", [
    ("v2-container", [1.5]),                # a container with --cpus=1.5 (cgroupns)
    ("v2-nested", [None, 4.0, None]),       # the quota sits on the pod, above the container
    ("v2-unlimited", [None]),
    ("v1-docker", [0.5]),                   # --cpus=0.5 on cgroup v1
    ("v1-unlimited", [None])])
def test_quotas_are_read_from_every_cgroup_on_the_way_up(case, expected):
    proc = (FIXTURES / f"{case}.proc").read_text()
    assert cpus.quotas(FIXTURES / case, proc) == expected


@pytest.mark.parametrize("affinity, quotas, expected", [
    (8, [None], 8), (8, [1.5], 2), (8, [0.5], 1), (2, [4.0], 2), (64, [None, 4.0, 16.0], 4),
    (1, [], 1)])
def test_usable_cpus_are_the_affinity_capped_by_the_smallest_quota(affinity, quotas, expected):
    assert cpus.cpus_from(affinity, quotas) == expected


def test_usable_cpus_on_this_machine_are_within_its_affinity():
    import os

    assert 1 <= cpus.usable_cpus() <= len(os.sched_getaffinity(0))


@pytest.mark.parametrize("cpu_count, expected", [(1, (4, 4)), (2, (8, 8)), (128, (512, 512)),
                                                 (129, (512, 516)), (1024, (512, 4096))])
def test_the_derived_consumer_default_is_clamped(cpu_count, expected):
    assert derived_consumers(cpu_count) == expected


def test_a_host_with_many_cpus_starts_with_the_clamped_default_and_says_so(monkeypatch, caplog):
    monkeypatch.setattr(cpus, "usable_cpus", lambda: 200)
    settings = load({})  # no STAGERUNNER_CONSUMERS: never an error about it
    assert settings.consumers == CONSUMERS_MAX
    with caplog.at_level(logging.INFO, logger="stagerunner.main"):
        cli.log_derived_defaults(settings)
    [record] = [r for r in caplog.records if getattr(r, "event", "") == "config.clamped"]
    assert record.derived == 800 and record.used == CONSUMERS_MAX and record.cpus == 200


def test_a_consumer_count_the_user_set_is_never_clamped_silently():
    from stagerunner.errors import ConfigError

    with pytest.raises(ConfigError, match="STAGERUNNER_CONSUMERS='600'"):
        load({"STAGERUNNER_CONSUMERS": "600"})
    settings = load({"STAGERUNNER_CONSUMERS": "3"})
    assert settings.consumers == 3
