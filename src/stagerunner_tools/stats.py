"""Pure statistics for the benchmark and the soak: medians, percentiles, rates, and the
table's number format (unit-tested without processes or a database)."""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence


def median(values: Iterable[float]) -> float:
    """The median; the mean of the two middle values for an even count."""
    xs = sorted(values)
    if not xs:
        raise ValueError("median of no values")
    mid = len(xs) // 2
    return float(xs[mid]) if len(xs) % 2 else (xs[mid - 1] + xs[mid]) / 2


def percentile(values: Iterable[float], p: float) -> float:
    """The p-th percentile (0..100), linear between closest ranks (numpy's default)."""
    xs = sorted(values)
    if not xs:
        raise ValueError("percentile of no values")
    if not 0 <= p <= 100:
        raise ValueError(f"percentile must be within 0..100, got {p}")
    k = (len(xs) - 1) * p / 100
    lo = math.floor(k)
    hi = min(lo + 1, len(xs) - 1)
    return float(xs[lo] + (xs[hi] - xs[lo]) * (k - lo))


def summarize(values: Sequence[float]) -> dict[str, float]:
    """min / median / max and the count of one metric's per-run values."""
    if not values:
        raise ValueError("nothing to summarize")
    return {"n": len(values), "min": float(min(values)), "median": median(values),
            "max": float(max(values))}


def rate(count: float, seconds: float) -> float:
    """count per second; ValueError for a non-positive interval."""
    if seconds <= 0:
        raise ValueError(f"interval must be positive, got {seconds}")
    return count / seconds


def ratio(numerator: float, denominator: float) -> float:
    if denominator <= 0:
        raise ValueError(f"denominator must be positive, got {denominator}")
    return numerator / denominator


def cpu_percent(cpu_seconds: float, wall_seconds: float) -> float:
    """CPU time over wall time, in percent of one core."""
    return 100.0 * rate(cpu_seconds, wall_seconds)


def kib_to_mib(kib: float) -> float:
    return kib / 1024.0


def format_value(value: float) -> str:
    """Compact, fixed-width friendly number formatting for the table."""
    if value != value:  # NaN
        return "nan"
    magnitude = abs(value)
    if magnitude >= 1000:
        return f"{value:,.0f}"
    if magnitude >= 100:
        return f"{value:.1f}"
    if magnitude >= 1:
        return f"{value:.2f}"
    return f"{value:.3f}"
