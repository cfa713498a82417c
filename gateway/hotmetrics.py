"""The metrics every postback updates, counted in plain dicts and read at scrape time.

prometheus-client's `labels(...).inc()` and `Histogram.observe` take a lock and walk objects
on every call; the postback path made seven such updates per request. Here a counter is an
int in a dict keyed by its label values, and a histogram is a list of bucket counts plus a
sum: all of it touched only on the event loop's thread, so no lock is needed. A custom
collector turns them into the usual Prometheus families when `/metrics` is scraped, with the
same names, labels and buckets as before.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString


@dataclass
class CounterFamily:
    name: str  # without `_total`
    documentation: str
    labels: tuple[str, ...]
    values: dict[tuple[str, ...], float] = field(default_factory=dict)

    def inc(self, labels: tuple[str, ...], amount: float = 1) -> None:
        values = self.values
        values[labels] = values.get(labels, 0) + amount

    def collect(self) -> Metric:
        family = CounterMetricFamily(self.name, self.documentation, labels=self.labels)
        for labels, value in sorted(self.values.items()):
            family.add_metric(labels, value)
        return family


@dataclass
class HistogramFamily:
    name: str
    documentation: str
    labels: tuple[str, ...]
    bounds: Sequence[float]  # upper bounds, ascending; +Inf is implied
    # label values -> [count per bucket (not cumulative; the last is +Inf), sum]
    values: dict[tuple[str, ...], tuple[list[int], list[float]]] = field(default_factory=dict)

    def observe(self, labels: tuple[str, ...], amount: float) -> None:
        kept = self.values.get(labels)
        if kept is None:
            kept = self.values[labels] = ([0] * (len(self.bounds) + 1), [0.0])
        counts, total = kept
        counts[bisect_left(self.bounds, amount)] += 1  # the first bound >= amount: `le`
        total[0] += amount

    def collect(self) -> Metric:
        family = HistogramMetricFamily(self.name, self.documentation, labels=self.labels)
        for labels, (counts, total) in sorted(self.values.items()):
            cumulative, buckets = 0, []
            for bound, count in zip([*self.bounds, float("inf")], counts, strict=True):
                cumulative += count
                buckets.append((_bound_text(bound), cumulative))
            family.add_metric(labels, buckets, total[0])
        return family


class HotPathCollector(Collector):
    """Registered in the gateway's registry; yields each family's current values."""

    def __init__(self, families: Sequence[CounterFamily | HistogramFamily]) -> None:
        self._families = families

    def collect(self) -> Iterator[Metric]:
        for family in self._families:
            yield family.collect()


def _bound_text(bound: float) -> str:
    """`le` as prometheus-client writes it (`0.005`, `1.0`, `+Inf`), so scrapes stay the same."""
    text: str = floatToGoString(bound)  # type: ignore[no-untyped-call]
    return text
