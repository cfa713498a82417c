"""The overview's chart and its axes: the value axis' round steps, the time axis' clock
labels and the bars placed against them, as pure functions; then the page's SVG over real
sockets, from a real gateway after real postbacks, with the journal's clock set to a chosen
minute so the window and its labels are known. (In a real browser, where the labels are
checked to fit the drawing: test_inspector_browser.py's overview test.)"""

from __future__ import annotations

import asyncio
import calendar
import html
import itertools
import re
import xml.etree.ElementTree as ElementTree
from collections import Counter

import aiohttp
import pytest

from gateway.errors import Outcome
from gateway.inspector.charts import (
    NOW_ROOM,
    PLOT,
    count_label,
    nice_step,
    outcome_chart,
    scale_top,
    time_ticks,
)
from gateway.journal import MINUTES, Minute
from tests.conftest import UpstreamFactory
from tests.support.clock import FakeClock
from tests.support.inspectorsite import WRONG_KEY, Site, SiteFactory, start_site, tapper_config
from tests.test_inspector_access import BEARER, get

__all__ = ["start_site"]  # the fixture, used by name

OUTCOMES = [Outcome.FORWARDED, Outcome.DUPLICATE, Outcome.REJECTED]


def epoch_minute(hour: int, minute: int) -> int:
    """Minutes since the epoch at hour:minute UTC on a day of the tests' choosing."""
    return calendar.timegm((2026, 12, 3, hour, minute, 0)) // 60


def hour_from(first: int, busiest: int = 0) -> list[Minute]:
    """An hour of minutes from `first`, empty but for `busiest` forwarded postbacks in the
    last one, as Journal.last_hour gives them."""
    minutes = [Minute(first + offset) for offset in range(MINUTES)]
    if busiest:
        minutes[-1].outcomes[Outcome.FORWARDED] = busiest
    return minutes


# -- the value axis ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("peak", "step", "top", "labels"),
    [
        pytest.param(0, 1, 1, ["0", "1"], id="no postbacks: still an axis from 0 to 1"),
        (1, 1, 1, ["0", "1"]),
        (3, 1, 3, ["0", "1", "2", "3"]),  # counts are whole: no step below 1
        (7, 2, 8, ["0", "2", "4", "6", "8"]),
        (10, 2, 10, ["0", "2", "4", "6", "8", "10"]),
        (99, 20, 100, ["0", "20", "40", "60", "80", "100"]),
        (1234, 500, 1500, ["0", "500", "1000", "1500"]),
        (123_456, 50_000, 150_000, ["0", "50k", "100k", "150k"]),
    ],
)
def test_the_value_axis_climbs_in_round_steps_to_a_round_top_at_or_above_the_peak(
    peak: int, step: int, top: int, labels: list[str]
) -> None:
    assert nice_step(peak) == step
    assert scale_top(peak, step) == top
    chart = outcome_chart(hour_from(epoch_minute(13, 7), peak), OUTCOMES)
    assert (chart.peak, chart.scale) == (peak, top)
    assert [tick.label for tick in chart.values] == labels
    # 0 on the plot's floor, the top on its ceiling, evenly between
    heights = [PLOT.bottom - tick.at for tick in chart.values]
    assert heights[0] == 0 and heights[-1] == pytest.approx(PLOT.height)
    gaps = {round(upper - lower, 6) for lower, upper in itertools.pairwise(heights)}
    assert len(gaps) == 1


@pytest.mark.parametrize(
    ("count", "label"),
    [(0, "0"), (9000, "9000"), (10_000, "10k"), (150_000, "150k"), (20_000_000, "20M")],
)
def test_big_counts_are_labelled_short_enough_for_the_margin(count: int, label: str) -> None:
    assert count_label(count) == label


def test_bars_stand_on_the_floor_and_reach_their_count_on_the_axis() -> None:
    """7 postbacks on an axis up to 8: the stack's top is at 7/8 of the plot's height, and
    its parts add up to it."""
    minutes = hour_from(epoch_minute(13, 7))
    minutes[-1].outcomes.update({Outcome.FORWARDED: 4, Outcome.DUPLICATE: 2, Outcome.REJECTED: 1})
    minutes[10].outcomes[Outcome.FORWARDED] = 2
    chart = outcome_chart(minutes, OUTCOMES)
    last = [bar for bar in chart.bars if bar.x > PLOT.right - 20]
    assert [bar.outcome for bar in last] == OUTCOMES  # stacked in the order given, from 0 up
    assert last[0].y + last[0].height == pytest.approx(PLOT.bottom)
    assert sum(bar.height for bar in last) == pytest.approx(PLOT.height * 7 / 8)
    assert min(bar.y for bar in last) == pytest.approx(PLOT.bottom - PLOT.height * 7 / 8)
    assert [bar.title for bar in last] == [
        "14:06 forwarded: 4",
        "14:06 duplicate: 2",
        "14:06 rejected: 1",
    ]
    assert all(PLOT.left <= bar.x and bar.x + bar.width <= PLOT.right for bar in chart.bars)


# -- the time axis -------------------------------------------------------------------------------


def test_a_window_from_an_odd_minute_is_labelled_every_ten_round_minutes() -> None:
    """13:07 to 14:07: 13:10 ... 14:00, each at its minute's left edge, then "now"."""
    first = epoch_minute(13, 7)
    assert time_ticks(first, MINUTES) == [epoch_minute(13, m) for m in (10, 20, 30, 40, 50)] + [
        epoch_minute(14, 0)
    ]
    chart = outcome_chart(hour_from(first), OUTCOMES)
    assert [tick.label for tick in chart.times] == [
        "13:10",
        "13:20",
        "13:30",
        "13:40",
        "13:50",
        "14:00",
    ]
    slot = PLOT.width / MINUTES
    assert [tick.at for tick in chart.times] == pytest.approx(
        [PLOT.left + offset * slot for offset in (3, 13, 23, 33, 43, 53)]
    )
    assert chart.span == "13:07 to 14:07 UTC"


@pytest.mark.parametrize(
    ("start", "labels"),
    [
        pytest.param((13, 0), ["13:00", "13:10", "13:20", "13:30", "13:40", "13:50"], id="round"),
        pytest.param((13, 51), ["14:00", "14:10", "14:20", "14:30", "14:40"], id="near-now"),
        pytest.param((23, 35), ["23:40", "23:50", "00:00", "00:10", "00:20", "00:30"], id="0h"),
    ],
)
def test_no_clock_label_crowds_now_and_the_clock_turns_at_midnight(
    start: tuple[int, int], labels: list[str]
) -> None:
    """A window on a round minute starts with its label and leaves the end to "now"; one
    whose last round minute is within NOW_ROOM of the end leaves that one out."""
    chart = outcome_chart(hour_from(epoch_minute(*start)), OUTCOMES)
    assert [tick.label for tick in chart.times] == labels
    slot = PLOT.width / MINUTES
    assert PLOT.right - chart.times[-1].at >= NOW_ROOM * slot


def test_an_empty_hour_is_a_chart_with_an_axis_from_0_to_1_and_no_bars() -> None:
    chart = outcome_chart(hour_from(epoch_minute(13, 7)), OUTCOMES)
    assert chart.empty and chart.bars == []
    assert [tick.label for tick in chart.values] == ["0", "1"]
    assert len(chart.times) == 6


# -- the page ------------------------------------------------------------------------------------


def charts_on(page: str) -> dict[str, ElementTree.Element]:
    """Each route's chart on the overview, by route name, parsed (the SVG is well-formed)."""
    found = re.findall(r'<section class="route" id="route-([^"]+)">.*?(<svg .*?</svg>)', page, re.S)
    return {name: ElementTree.fromstring(svg) for name, svg in found}


def labels(svg: ElementTree.Element, axis: str) -> list[str]:
    return [text.text or "" for text in svg.iterfind(f"g[@class='{axis}']/text")]


async def overview(site: Site) -> str:
    async with aiohttp.ClientSession() as http:
        status, _, body = await get(http, site.url("/"), BEARER)
    assert status == 200, body[:300]
    return body


async def test_the_overview_draws_both_axes_for_real_postbacks(
    start_upstream: UpstreamFactory, start_site: SiteFactory
) -> None:
    """Before any postback the chart says so on an axis from 0 to 1; after 7 in one minute
    (4 forwarded, 2 copies, 1 wrong key) the axis reads 0 to 8, the bars' tooltips name
    the minute, and the clock labels are the window's round ten minutes, in UTC."""
    app = start_upstream()
    site = await start_site(tapper_config(app), app)
    assert site.runtime is not None
    now = calendar.timegm((2026, 12, 3, 13, 7, 30))  # the window: 12:08 to 13:08
    site.runtime.journal.clock = FakeClock(now)
    clock_labels = ["12:10", "12:20", "12:30", "12:40", "12:50", "13:00", "now"]

    (svg,) = charts_on(await overview(site)).values()
    assert labels(svg, "values") == ["0", "1"]
    assert labels(svg, "times") == clock_labels
    assert [text.text for text in svg.iterfind("text[@class='empty']")] == [
        "no postbacks in the last hour"
    ]
    assert svg.find("rect[@class='bar forwarded']") is None

    def send() -> Counter[str]:
        sent = [site.send(f"u-{n}") for n in range(4)]
        sent += [site.send("u-0"), site.send("u-1"), site.send("u-9", key=WRONG_KEY)]
        return Counter(reply.outcome for reply in sent)

    assert await asyncio.to_thread(send) == {"forwarded": 4, "duplicate": 2, "rejected": 1}
    page = await overview(site)
    (svg,) = charts_on(page).values()
    assert svg.get("role") == "img"
    assert svg.get("aria-label") == (
        "tapper: postbacks per minute by outcome, 12:08 to 13:08 UTC; the busiest minute had 7"
    )
    title = svg.find("title")
    assert title is not None and title.text is not None and "12:08 to 13:08 UTC" in title.text
    assert labels(svg, "values") == ["0", "2", "4", "6", "8"]
    assert labels(svg, "times") == clock_labels
    assert svg.find("text[@class='empty']") is None
    tooltips = [bar.findtext("title") for bar in svg.iterfind("rect[title]")]
    assert tooltips == ["13:07 forwarded: 4", "13:07 duplicate: 2", "13:07 rejected: 1"]
    caption = html.unescape(page.split("<figcaption>")[1].split("</figcaption>")[0])
    assert "Postbacks per minute by outcome, the last 60 minutes to now (UTC)" in caption
    assert "the busiest minute had 7" in caption
