"""Inline SVG charts, drawn on the server (pure; no script, no network, no style attributes,
so the page's Content-Security-Policy holds). Only numbers go in; every label is built
here from numbers and escaped anyway.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from markupsafe import Markup, escape


@dataclass(frozen=True, slots=True)
class Bucket:
    ago: int  # buckets before now: 0 is the current one
    success: int = 0
    failed: int = 0
    cancelled: int = 0

    @property
    def total(self) -> int:
        return self.success + self.failed + self.cancelled


def fill(rows: Sequence[dict[str, int]], count: int) -> list[Bucket]:
    """One Bucket per slot, oldest first, zeros where nothing finished."""
    by_ago = {r["ago"]: r for r in rows}
    return [Bucket(ago, *(int(by_ago.get(ago, {}).get(k, 0)) for k in ("success", "failed", "cancelled")))
            for ago in range(count - 1, -1, -1)]


def throughput(buckets: Sequence[Bucket], *, bucket_s: float, width: int = 1200,
               height: int = 200) -> Markup:
    """Stacked bars per bucket (success, failed, cancelled) with a y scale and tooltips."""
    left, bottom, top = 44, 22, 10
    plot_w, plot_h = width - left - 8, height - bottom - top
    peak = _nice(max((b.total for b in buckets), default=0))
    slot = plot_w / max(len(buckets), 1)
    parts = [f'<svg class="chart" viewBox="0 0 {width} {height}" width="{width}" height="{height}" '
             f'role="img" aria-label="tasks finished per {_unit(bucket_s)}">']
    for frac in (0, 0.5, 1):
        y = top + plot_h * (1 - frac)
        parts.append(f'<line class="grid" x1="{left}" x2="{width - 8}" y1="{y:.1f}" y2="{y:.1f}"/>')
        parts.append(f'<text class="axis" x="{left - 6}" y="{y + 4:.1f}" text-anchor="end">'
                     f'{escape(_short(peak * frac))}</text>')
    for i, b in enumerate(buckets):
        x, y = left + i * slot + 1, top + plot_h
        for kind, value in (("success", b.success), ("failed", b.failed), ("cancelled", b.cancelled)):
            h = plot_h * value / peak if peak else 0
            if h > 0:
                y -= h
                parts.append(f'<rect class="bar {kind}" x="{x:.1f}" y="{y:.1f}" '
                             f'width="{max(slot - 2, 1):.1f}" height="{h:.1f}"/>')
        label = (f"{_when(b.ago, bucket_s)}: {b.success} succeeded, {b.failed} failed, "
                 f"{b.cancelled} cancelled")
        parts.append(f'<rect class="hover" x="{x:.1f}" y="{top}" width="{slot:.1f}" height="{plot_h}">'
                     f'<title>{escape(label)}</title></rect>')
    span = len(buckets) * bucket_s
    for frac, anchor in ((0, "start"), (0.5, "middle"), (1, "end")):
        text = "now" if frac == 1 else f"-{_duration(span * (1 - frac))}"
        parts.append(f'<text class="axis" x="{left + plot_w * frac:.1f}" y="{height - 6}" '
                     f'text-anchor="{anchor}">{escape(text)}</text>')
    parts.append("</svg>")
    return Markup("".join(parts))


def histogram(counts: Sequence[int], *, width: int = 154, height: int = 30) -> Markup:
    """Runtime as a share of the deadline: ten tenths, then at or past it (killed), on a
    square-root scale. The last fifth is amber, kills red: a task living at its deadline
    stands out."""
    peak = max(counts, default=0)
    slot = width / max(len(counts), 1)
    parts = [f'<svg class="hist" viewBox="0 0 {width} {height}" width="{width}" height="{height}" '
             f'role="img" aria-label="runtime as a share of the deadline">']
    for i, n in enumerate(counts):
        kind = "zero" if not n else "killed" if i == 10 else ("near" if i >= 8 else "ok")
        # square-root scale: a few kills next to thousands of quick runs still show
        h = (height - 2) * (n / peak) ** 0.5 if peak else 0
        what = "at or past the deadline" if i == 10 else f"{i * 10}-{i * 10 + 10}% of the deadline"
        parts.append(f'<rect class="bin {kind}" x="{i * slot + 0.5:.1f}" y="{height - max(h, 1):.1f}" '
                     f'width="{slot - 1:.1f}" height="{max(h, 1):.1f}"><title>{escape(f"{n} runs {what}")}'
                     f'</title></rect>')
    parts.append("</svg>")
    return Markup("".join(parts))


def _nice(value: float) -> float:
    """The axis top: 1, 2 or 5 times a power of ten, at least `value`."""
    if value <= 0:
        return 1
    step = 1.0
    while step * 10 <= value:
        step *= 10
    return next(m * step for m in (1, 2, 5, 10) if m * step >= value)


def _short(value: float) -> str:
    return f"{value / 1000:g}k" if value >= 1000 else f"{value:g}"


def _unit(bucket_s: float) -> str:
    return "minute" if bucket_s == 60 else f"{_duration(bucket_s)}"


def _duration(seconds: float) -> str:
    if seconds >= 3600:
        return f"{seconds / 3600:g}h"
    return f"{seconds / 60:g}m" if seconds >= 60 else f"{seconds:g}s"


def _when(ago: int, bucket_s: float) -> str:
    return "this minute" if ago == 0 and bucket_s == 60 else f"{_duration((ago + 1) * bucket_s)} ago"
