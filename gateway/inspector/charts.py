"""The overview's chart, computed here and drawn by the template as inline SVG: the page
needs no script library and nothing from the internet.

Everything the template draws is placed here, in the SVG's own units (its viewBox): the bars,
the value axis on the left (0 up to a round number at or above the busiest minute, one grid
line per step) and the time axis below (a clock label every TIME_STEP minutes, on round
minutes, and "now" at the right edge). Times are UTC, as in the bars' tooltips.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from ..journal import LATENCY_BOUNDS_MS, Minute

WIDTH, HEIGHT = 900, 180  # the SVG's viewBox; the page draws it this size in CSS pixels at most
BAR_GAP = 1
VALUE_STEPS = 5  # the value axis has at most this many steps from 0 to its top
TIME_STEP = 10  # minutes between two labels of the time axis
NOW_ROOM = 4  # minutes left of the right edge ("now") where no clock label is put


@dataclass(frozen=True)
class Plot:
    """Where the bars go inside the viewBox: room is left for the counts on the left and
    the clock below."""

    left: float = 44
    top: float = 10
    right: float = WIDTH - 6
    bottom: float = HEIGHT - 26

    @property
    def width(self) -> float:
        return self.right - self.left

    @property
    def height(self) -> float:
        return self.bottom - self.top


PLOT = Plot()


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
class Tick:
    """A labelled place on an axis: `at` is x on the time axis, y on the value axis."""

    at: float
    label: str


@dataclass(frozen=True)
class Chart:
    bars: list[Bar]
    peak: int  # postbacks in the busiest minute
    scale: int  # the value axis' top: a round number, at least the peak (1 for no postbacks)
    values: list[Tick]  # the value axis, 0 first
    times: list[Tick]  # the time axis, oldest first; "now" is the plot's right edge
    span: str  # the window in words, for the chart's accessible name: "13:07 to 14:07 UTC"
    plot: Plot = field(default=PLOT)
    width: int = WIDTH
    height: int = HEIGHT

    @property
    def empty(self) -> bool:
        return self.peak == 0


def outcome_chart(minutes: Sequence[Minute], outcomes: Sequence[str]) -> Chart:
    """Postbacks per minute, stacked by outcome, oldest minute on the left."""
    peak = max((sum(minute.outcomes.values()) for minute in minutes), default=0)
    step = nice_step(peak)
    scale = scale_top(peak, step)
    slot = PLOT.width / max(len(minutes), 1)
    bars: list[Bar] = []
    for index, minute in enumerate(minutes):
        top = PLOT.bottom
        for outcome in outcomes:
            count = minute.outcomes.get(outcome, 0)
            if not count:
                continue
            height = PLOT.height * count / scale
            top -= height
            label = f"{_clock(minute.minute)} {outcome}: {count}"
            x = PLOT.left + index * slot
            bars.append(Bar(x, top, slot - BAR_GAP, height, outcome, label))
    values = [
        Tick(PLOT.bottom - PLOT.height * value / scale, count_label(value))
        for value in range(0, scale + 1, step)
    ]
    first = minutes[0].minute if minutes else 0
    times = [
        Tick(PLOT.left + (minute - first) * slot, _clock(minute))
        for minute in time_ticks(first, len(minutes))
    ]
    span = f"{_clock(first)} to {_clock(first + len(minutes))} UTC"
    return Chart(bars, peak, scale, values, times, span)


def nice_step(peak: int, steps: int = VALUE_STEPS) -> int:
    """The value axis' step: the smallest of 1, 2, 5, 10, 20, 50, 100... that climbs from 0
    to `peak` in at most `steps` steps (1 for a peak of 0). Counts are whole, so never less
    than 1."""
    magnitude = 1
    while True:
        for mantissa in (1, 2, 5):
            step = mantissa * magnitude
            if step * steps >= peak:
                return step
        magnitude *= 10


def scale_top(peak: int, step: int) -> int:
    """The value axis' top: the first multiple of `step` at or above `peak`, and at least one
    step, so an empty chart still has an axis from 0 to 1."""
    return max(step, -(-peak // step) * step)


def count_label(count: int) -> str:
    """A value axis label, short enough for its margin: `500`, `2000`, `15k`, `20M`."""
    if count >= 10_000_000:
        return f"{count / 1_000_000:g}M"
    if count >= 10_000:
        return f"{count / 1000:g}k"
    return str(count)


def time_ticks(first: int, minutes: int, every: int = TIME_STEP) -> list[int]:
    """The epoch minutes the time axis labels in a window of `minutes` minutes from `first`:
    each multiple of `every` in it, except those within NOW_ROOM minutes of the window's end,
    where "now" is written."""
    start = -(-first // every) * every
    end = first + minutes - NOW_ROOM
    return list(range(start, end + 1, every))


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
    """HH:MM in UTC."""
    return f"{epoch_minute // 60 % 24:02d}:{epoch_minute % 60:02d}"
