"""The metrics every postback updates, counted in plain dicts and read at scrape time.

prometheus-client's `labels(...).inc()` and `Histogram.observe` take a lock and walk objects
on every call, and a forwarded postback makes four such updates (a retried or refused one,
more). Here a counter is a number in a dict keyed by its label values, and a histogram is a
list of bucket counts plus a sum: all of it touched only on the event loop's thread, so no
lock is needed. A custom collector turns them into the usual Prometheus families when
`/metrics` is scraped, with the same names, labels, buckets and sample text as
prometheus-client's own classes, samples sorted by label values (tests/test_hotmetrics.py).

Which kind a new metric should be:
- a series updated by every postback on the event loop (the request path: `request_done`,
  `upstream_attempt`): a `CounterFamily` or `HistogramFamily` here, listed in the
  `HotPathCollector` of `metrics.py`;
- everything else (per reload, per delivery, per eviction, a gauge, anything updated from
  another thread such as the store's writer): prometheus-client's `Counter`, `Gauge` or
  `Histogram`, which are thread-safe and need no code here.

Measured 2026-12-02 on the development machine (x86_64, 2 cores, Python 3.11.7,
prometheus-client 0.26.0) with `bench/instructions.py`, three runs: these classes take
765,580 instructions per postback against 794,812 for prometheus-client's classes with their
`labels(...)` children cached, 3.7 % fewer (runs and method: bench/README.md).
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector


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
    _le: tuple[str, ...] = field(init=False, repr=False)  # each bucket's `le`, +Inf last

    def __post_init__(self) -> None:
        if list(self.bounds) != sorted(set(self.bounds)):
            raise ValueError(f"{self.name}: bucket bounds must be ascending and distinct")
        self._le = (*(_bound_text(bound) for bound in self.bounds), "+Inf")

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
            for le, count in zip(self._le, counts, strict=True):
                cumulative += count
                buckets.append((le, cumulative))
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
    """`le` as prometheus-client writes it (`0.005`, `1.0`): Python's shortest repr of the
    float, which is what its own formatter returns for any bound above 0 and below 1e6 (from
    1e6 on it writes Go's exponent form, `1e+06`, so such bounds are refused here)."""
    if not 0 < bound < 1e6:
        raise ValueError(f"histogram bound {bound!r}: only 0 < bound < 1e6 is supported")
    return repr(float(bound))
