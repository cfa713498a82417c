"""The hot-path metric classes scrape exactly as prometheus-client's own would."""

from __future__ import annotations

import pytest
from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest

from gateway.hotmetrics import CounterFamily, HistogramFamily, HotPathCollector
from gateway.metrics import LATENCY_BUCKETS

UPDATES = [  # (route, upstream, seconds), deliberately not in label order
    ("zeta", "u2", 0.0004),
    ("alpha", "u1", 0.01),
    ("zeta", "u1", 31.0),
    ("mid", "u1", 2.5),
    ("alpha", "u1", 0.0123),
    ("zeta", "u2", 1e-7),
    ("alpha", "u2", 5.0),
    ("mid", "u1", 10),
]


def test_a_scrape_is_byte_identical_to_prometheus_clients_classes() -> None:
    hot = CollectorRegistry()
    attempts = CounterFamily("attempts", "Attempts.", ("route", "upstream"))
    latency = HistogramFamily("latency_seconds", "Latency.", ("route", "upstream"), LATENCY_BUCKETS)
    hot.register(HotPathCollector((attempts, latency)))
    for route, upstream, seconds in UPDATES:
        attempts.inc((route, upstream))
        attempts.inc((route, upstream), 2)
        latency.observe((route, upstream), seconds)

    plain = CollectorRegistry()
    counter = Counter("attempts", "Attempts.", ["route", "upstream"], registry=plain)
    histogram = Histogram(
        "latency_seconds",
        "Latency.",
        ["route", "upstream"],
        buckets=LATENCY_BUCKETS,
        registry=plain,
    )
    for labels in sorted({(route, upstream) for route, upstream, _ in UPDATES}):
        counter.labels(*labels)  # children in label order: the order the hot collector writes
        histogram.labels(*labels)
    for route, upstream, seconds in UPDATES:
        counter.labels(route, upstream).inc()
        counter.labels(route, upstream).inc(2)
        histogram.labels(route, upstream).observe(seconds)

    assert generate_latest(hot) == generate_latest(plain)


@pytest.mark.parametrize("bounds", [(0.1, 0.05), (1, 1), (0, 1), (1, 1e6), (1, float("inf"))])
def test_bounds_the_bucket_text_cannot_match_are_refused(bounds: tuple[float, ...]) -> None:
    with pytest.raises(ValueError):
        HistogramFamily("h", "H.", ("route",), bounds)
