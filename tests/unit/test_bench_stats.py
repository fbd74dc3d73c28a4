"""The harness's pure statistics and /proc parsers (no database, no processes)."""

from __future__ import annotations

import math

import pytest

from stagerunner_tools import bench, procfs, stats


def test_median_odd_even_and_unsorted() -> None:
    assert stats.median([3, 1, 2]) == 2
    assert stats.median([4, 1, 3, 2]) == 2.5
    assert stats.median([7.5]) == 7.5


def test_median_of_nothing_is_an_error() -> None:
    with pytest.raises(ValueError):
        stats.median([])


@pytest.mark.parametrize(("p", "expected"), [(0, 1.0), (50, 50.5), (100, 100.0), (99, 99.01),
                                             (25, 25.75)])
def test_percentile_interpolates_like_numpy(p: float, expected: float) -> None:
    assert stats.percentile(range(1, 101), p) == pytest.approx(expected)


def test_percentile_small_samples() -> None:
    assert stats.percentile([5], 99) == 5
    assert stats.percentile([10, 0], 50) == 5
    assert stats.percentile([1, 2, 3], 50) == stats.median([1, 2, 3])


def test_percentile_rejects_bad_input() -> None:
    with pytest.raises(ValueError):
        stats.percentile([], 50)
    with pytest.raises(ValueError):
        stats.percentile([1, 2], 101)
    with pytest.raises(ValueError):
        stats.percentile([1, 2], -1)


def test_summarize() -> None:
    assert stats.summarize([3.0, 1.0, 2.0]) == {"n": 3, "min": 1.0, "median": 2.0, "max": 3.0}
    with pytest.raises(ValueError):
        stats.summarize([])


def test_rate_ratio_cpu_percent() -> None:
    assert stats.rate(1000, 2.0) == 500
    assert stats.ratio(85, 100) == pytest.approx(0.85)
    assert stats.cpu_percent(0.03, 3.0) == pytest.approx(1.0)
    for bad in (lambda: stats.rate(1, 0), lambda: stats.ratio(1, 0),
                lambda: stats.cpu_percent(1, -1)):
        with pytest.raises(ValueError):
            bad()


def test_parse_only() -> None:
    assert bench.parse_only(None) == bench.MEASUREMENTS
    assert bench.parse_only("") == bench.MEASUREMENTS
    assert bench.parse_only("pickle, drain") == ("drain", "pickle")  # canonical order
    with pytest.raises(ValueError, match="nope"):
        bench.parse_only("drain,nope")


def test_rss_of_this_process() -> None:
    import os

    assert procfs.rss_kib(os.getpid()) > 1000
    assert stats.kib_to_mib(2048) == 2.0


def test_parse_stat_survives_odd_comm() -> None:
    # comm "(a) b)" holds spaces and parentheses; utime..cstime = 11, 22, 33, 44
    fields = ["S", "100", "200", "300", "0", "-1", "4194304", "0", "0", "0", "0",
              "11", "22", "33", "44", "20", "0", "1", "0", "5"]
    st = procfs.parse_stat("4242 ((a) b)) " + " ".join(fields))
    assert st == procfs.Stat(pid=4242, state="S", ppid=100, session=300, cpu_ticks=110, child_ticks=77)


def test_parse_stat_of_this_process() -> None:
    with open("/proc/self/stat") as f:
        st = procfs.parse_stat(f.read())
    import os

    assert st.ppid == os.getppid()
    assert st.cpu_ticks >= 0


def test_summarize_runs_orders_known_metrics_first_and_keeps_values() -> None:
    runs = [{"fork_ceiling": 1000.0, "zz_extra": 1.0, "enqueue_bulk_rate": 5.0},
            {"fork_ceiling": 3000.0, "enqueue_bulk_rate": 7.0}]
    summary = bench.summarize_runs(runs)
    assert list(summary) == ["enqueue_bulk_rate", "fork_ceiling", "zz_extra"]
    assert summary["fork_ceiling"]["median"] == 2000.0
    assert summary["fork_ceiling"]["values"] == [1000.0, 3000.0]
    assert summary["zz_extra"]["n"] == 1
    table = bench.render_table(summary)
    assert "fork_ceiling" in table and "2,000" in table


def test_format_value() -> None:
    assert stats.format_value(12345.6) == "12,346"
    assert stats.format_value(123.45) == "123.5"
    assert stats.format_value(1.234) == "1.23"
    assert stats.format_value(0.1234) == "0.123"
    assert stats.format_value(math.nan) == "nan"


def test_quick_options_are_small_and_bounded() -> None:
    args = bench.build_parser().parse_args(["--quick", "--consumers", "2"])
    o = bench.options_from(args)
    assert o.runs == 1 and o.tasks <= 2000 and o.drain_tasks <= 500
    assert o.deadline_tasks == 6
    full = bench.options_from(bench.build_parser().parse_args(["--runs", "3"]))
    assert full.runs == 3 and full.tasks == 20000 and full.only == bench.MEASUREMENTS
    with pytest.raises(ValueError):
        bench.options_from(bench.build_parser().parse_args(["--runs", "0"]))


def test_parse_schedstat() -> None:
    assert procfs.parse_schedstat_ns("123456789 4242 17\n") == 123456789
    with open("/proc/self/schedstat") as f:
        assert procfs.parse_schedstat_ns(f.read()) > 0
