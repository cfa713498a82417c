"""The overview's chart, computed here and drawn by the template as inline SVG: the page
needs no script library and nothing from the internet."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from ..journal import LATENCY_BOUNDS_MS, Minute

WIDTH, HEIGHT = 600, 120  # the SVG's viewBox
BAR_GAP = 1


@dataclass(frozen=True)
class Bar:
    """One outcome's part of one minute's bar."""

    x: float
    y: float
    width: float
    height: float
    outcome: str
    title: str  # the tooltip: minute, outcome, count


@dataclass(frozen=True)
class Chart:
    bars: list[Bar]
    peak: int  # postbacks in the busiest minute: the top of the scale
    width: int = WIDTH
    height: int = HEIGHT


def outcome_chart(minutes: Sequence[Minute], outcomes: Sequence[str]) -> Chart:
    """Postbacks per minute, stacked by outcome, oldest minute on the left."""
    peak = max((sum(minute.outcomes.values()) for minute in minutes), default=0)
    slot = WIDTH / max(len(minutes), 1)
    bars: list[Bar] = []
    for index, minute in enumerate(minutes):
        top = float(HEIGHT)
        for outcome in outcomes:
            count = minute.outcomes.get(outcome, 0)
            if not count or not peak:
                continue
            height = HEIGHT * count / peak
            top -= height
            label = f"{_clock(minute.minute)} {outcome}: {count}"
            bars.append(Bar(index * slot, top, slot - BAR_GAP, height, outcome, label))
    return Chart(bars, peak)


def percentile(bucket_counts: Sequence[int], fraction: float) -> str:
    """The latency bucket the given fraction of postbacks fell within, as `≤ 20 ms`."""
    total = sum(bucket_counts)
    if not total:
        return "-"
    wanted = fraction * total
    seen = 0
    for bound, count in zip(LATENCY_BOUNDS_MS, bucket_counts, strict=True):
        seen += count
        if seen >= wanted:
            return f"≤ {bound:g} ms" if bound != float("inf") else f"> {LATENCY_BOUNDS_MS[-2]:g} ms"
    return "-"


def _clock(epoch_minute: int) -> str:
    return f"{epoch_minute // 60 % 24:02d}:{epoch_minute % 60:02d}"
