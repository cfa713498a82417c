"""Prometheus metrics, one registry per running gateway, served on the admin port.

Label values come only from config (route and upstream names) or from closed sets (outcome,
reason, status class); zone_id is a validated integer. Never a secret, never a raw query.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Sequence
from decimal import Decimal, InvalidOperation

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, disable_created_metrics
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from . import __version__
from .errors import REJECTIONS, reasons_for
from .hotmetrics import CounterFamily, HistogramFamily, HotPathCollector
from .record import RequestRecord

disable_created_metrics()  # type: ignore[no-untyped-call]  # the *_created samples only clutter a scrape here

UNKNOWN_ROUTE = "unknown"
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)
REJECTION_REASONS = reasons_for(REJECTIONS)  # the closed label set, from the error classes


MAX_ZONE_LABELS = 100  # zone_id values per route on the revenue counter, then "other"
OTHER_ZONES = "other"

# config keys a reload cannot apply: the listeners, their header deadline, TLS and the store
# are built once, at start (`runtime.restart_pending`)
RESTART_ONLY = (
    "server.listen",
    "server.admin_listen",
    "server.client_timeout",
    "server.tls",
    "server.max_connections",
    "store",
    "history.enabled",
)


def status_class(status: int) -> str:
    return f"{status // 100}xx"


class _DedupEntries(Collector):
    """Reads the size of each route's dedup memory at scrape time."""

    def __init__(self, sizes: Callable[[], dict[str, int]]) -> None:
        self._sizes = sizes

    def collect(self) -> Iterator[Metric]:
        family = GaugeMetricFamily(
            "gateway_dedup_entries", "Delivered events remembered for dedup.", labels=["route"]
        )
        for route, size in sorted(self._sizes().items()):
            family.add_metric([route], size)
        yield family


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        # updated by every postback: plain counts, read at scrape time; which kind a new
        # metric should be, and what it saves: hotmetrics.py
        self.requests = CounterFamily(
            "gateway_requests", "Postback requests by route and outcome.", ("route", "outcome")
        )
        self.rejections = CounterFamily(
            "gateway_rejections", "Requests not forwarded, by reason.", ("route", "reason")
        )
        self.upstream_attempts = CounterFamily(
            "gateway_upstream_attempts",
            "Attempts to reach an upstream, by status class.",
            ("route", "upstream", "status_class"),
        )
        self.upstream_latency = HistogramFamily(
            "gateway_upstream_attempt_duration_seconds",
            "Duration of one upstream attempt.",
            ("route", "upstream"),
            LATENCY_BUCKETS,
        )
        self.request_latency = HistogramFamily(
            "gateway_request_duration_seconds",
            "End-to-end duration of a postback request.",
            ("route",),
            LATENCY_BUCKETS,
        )
        self.dedup_evictions = Counter(
            "gateway_dedup_evictions",
            "Dedup entries evicted before their TTL because the cache was full (weakens dedup).",
            ["route"],
            registry=r,
        )
        self.history_written = Counter(
            "gateway_history_records",
            "Rows written to the history (postbacks and later deliveries).",
            registry=r,
        )
        self.history_dropped = Counter(
            "gateway_history_dropped",
            "History rows not kept: buffer_full (the store fell behind), store_failed (a batch "
            "the store refused), shutdown (not written by the shutdown deadline).",
            ["why"],
            registry=r,
        )
        for why in ("buffer_full", "store_failed", "shutdown"):
            self.history_dropped.labels(why)
        self.in_flight = Gauge(
            "gateway_requests_in_flight", "Postback requests being handled now.", registry=r
        )
        self.reloads = Counter(
            "gateway_config_reloads", "Config reloads by result.", ["result"], registry=r
        )
        self.last_reload = Gauge(
            "gateway_config_last_reload_success_timestamp_seconds",
            "Unix time of the last successful config load.",
            registry=r,
        )
        self.admin_refusals = Counter(
            "gateway_admin_refusals",
            "Admin port requests refused: wrong_token, locked_out (too many wrong tokens from "
            "one address), misdirected (a Host that is not this port's), malformed.",
            ["reason"],
            registry=r,
        )
        for reason in ("wrong_token", "locked_out", "misdirected", "malformed"):
            self.admin_refusals.labels(reason)
        self.connections_refused = Counter(
            "gateway_connections_refused",
            "Connections closed before a request: over_capacity (max_connections), "
            "out_of_descriptors, plain_http_on_tls, tls_handshake (failed or too slow), idle.",
            ["port", "reason"],
            registry=r,
        )
        self.restart_pending = Gauge(
            "gateway_config_restart_pending",
            "1 for each config key whose reloaded value waits for a restart to take effect.",
            ["key"],
            registry=r,
        )
        self._zones_seen: dict[str, set[str]] = {}  # route -> zone labels given out so far
        self.valued_price = Counter(
            "gateway_valued_estimated_price_usd",
            "Sum of estimated_price of delivered valued events (compare with Monetag revenue).",
            ["route", "zone_id"],
            registry=r,
        )
        self.log_only = CounterFamily(
            "gateway_allowlist_log_only",
            "Requests allow_ips would have rejected while the route is in log_only mode.",
            ("route",),
        )
        self.allowlist_valid_key = CounterFamily(
            "gateway_allowlist_refused_valid_key",
            "Postbacks with the route's valid key from an address allow_ips does not list: "
            "refused (mode=enforce: rewards lost now) or let in (mode=log_only).",
            ("route", "mode"),
        )
        self.valued_postbacks = CounterFamily(
            "gateway_valued_postbacks",
            "Valued postbacks accepted (delivered to the app, or queued), by route.",
            ("route",),
        )
        self.deliveries = Counter(
            "gateway_deliveries",
            "Queued delivery attempts by result (delivered, retry, dead).",
            ["route", "upstream", "result"],
            registry=r,
        )
        self.queue_depth = Gauge(
            "gateway_queue_deliveries",
            "Queued deliveries by state (pending, delivered, dead).",
            ["route", "state"],
            registry=r,
        )
        self.queue_oldest = Gauge(
            "gateway_queue_oldest_pending_age_seconds",
            "Age of the oldest event still pending delivery.",
            ["route"],
            registry=r,
        )
        self.store_commits = Counter(
            "gateway_store_commits",
            "Store transactions committed (one per group of writes).",
            registry=r,
        )
        self.store_failures = Counter(
            "gateway_store_failures", "Store transactions that failed (disk full...).", registry=r
        )
        self.redis_latency = Histogram(
            "gateway_redis_duration_seconds",
            "Duration of Redis dedup operations.",
            ["operation"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.redis_errors = Counter(
            "gateway_redis_errors",
            "Redis dedup operations that failed.",
            ["operation"],
            registry=r,
        )
        self.dropped_parameters = CounterFamily(
            "gateway_dropped_parameters",
            "Incoming parameters not passed on: posing as a name the gateway writes, or "
            "carrying the key.",
            ("route",),
        )
        self.ymid_checks = CounterFamily(
            "gateway_ymid_checks",
            "Postbacks on routes with sessions by what their ymid proved: verified, or the "
            "reason it would not pay (refused with mode=enforce, let in with mode=log_only).",
            ("route", "result", "mode"),
        )
        r.register(
            HotPathCollector(
                (
                    self.ymid_checks,
                    self.requests,
                    self.rejections,
                    self.upstream_attempts,
                    self.upstream_latency,
                    self.request_latency,
                    self.log_only,
                    self.allowlist_valid_key,
                    self.valued_postbacks,
                    self.dropped_parameters,
                )
            )
        )
        self.malformed = Counter(
            "gateway_malformed_requests",
            "Requests refused before routing because they are not valid HTTP, by problem.",
            ["problem"],
            registry=r,
        )
        self.tls_reloads = Counter(
            "gateway_tls_certificate_reloads",
            "Certificate reloads by result.",
            ["result"],
            registry=r,
        )
        self.senders_untracked = Counter(
            "gateway_senders_untracked",
            "Postbacks with a valid key from a network past what senders seen holds in memory "
            "(not noted: the allowlist suggestion misses them).",
            registry=r,
        )
        self.ymids_issued = Counter(
            "gateway_ymids_issued",
            "Ymids issued to the Mini App's frontend, by route and placement ('' for none).",
            ["route", "placement"],
            registry=r,
        )
        self.ymid_requests_refused = Counter(
            "gateway_ymid_requests_refused",
            "Requests for a ymid refused, by route and reason (initData, origin, rate limit...).",
            ["route", "reason"],
            registry=r,
        )
        self.ymids_no_postback = Counter(
            "gateway_ymids_no_postback",
            "Issued ymids that received no postback within sessions.no_postback_after, by "
            "route and placement (counted once, by the replica that noticed).",
            ["route", "placement"],
            registry=r,
        )
        self.ymid_status_waiting = Gauge(
            "gateway_ymid_status_waiting",
            "Frontends waiting on a ymid's status (`?wait=`) on this replica.",
            registry=r,
        )
        self.dedup_fallbacks = Counter(
            "gateway_dedup_fallbacks",
            "Postbacks deduplicated by local memory only because Redis failed (fail_open).",
            ["route"],
            registry=r,
        )
        Gauge("gateway_build_info", "Build information.", ["version"], registry=r).labels(
            __version__
        ).set(1)
        for result in ("success", "failure"):
            self.reloads.labels(result)
            self.tls_reloads.labels(result)

    def watch_dedup(self, sizes: Callable[[], dict[str, int]]) -> None:
        self.registry.register(_DedupEntries(sizes))

    def watch_store(self, available: Callable[[], bool]) -> None:
        """`gateway_store_up`, read at scrape time; only where a store is configured."""
        up = Gauge(
            "gateway_store_up",
            "1 while the durable store answers, 0 since an operation on it failed.",
            registry=self.registry,
        )
        up.set_function(lambda: 1 if available() else 0)

    def watch_readiness(self, ready: Callable[[], bool]) -> None:
        """`gateway_ready`, read at scrape time: what /readyz says, as a number."""
        gauge = Gauge(
            "gateway_ready",
            "1 while /readyz answers 200 (config loaded, store up, not draining), else 0.",
            registry=self.registry,
        )
        gauge.set_function(lambda: 1 if ready() else 0)

    def watch_certificate(self, expires: Callable[[], float]) -> None:
        """`gateway_tls_certificate_expiry_timestamp_seconds`; only where the gateway
        terminates TLS (`server.tls`)."""
        gauge = Gauge(
            "gateway_tls_certificate_expiry_timestamp_seconds",
            "Unix time the certificate being served expires (its notAfter).",
            registry=self.registry,
        )
        gauge.set_function(expires)

    def sessions_configured(self, route: str, placements: Sequence[str]) -> None:
        """A route's sessions' series exist, at 0, before the first ymid: a ratio over an
        hour (the fill rate) is then defined from the start."""
        for placement in ("", *placements):
            self.ymids_issued.labels(route, placement)
            self.ymids_no_postback.labels(route, placement)

    def store_committed(self, ok: bool) -> None:
        """A store transaction committed, or failed (called from the store's writer thread:
        prometheus-client's counters are thread-safe)."""
        (self.store_commits if ok else self.store_failures).inc()

    def tls_reloaded(self, ok: bool) -> None:
        self.tls_reloads.labels("success" if ok else "failure").inc()

    def config_loaded(self, restart_pending: Sequence[str] = ()) -> None:
        self.reloads.labels("success").inc()
        self.last_reload.set(time.time())
        for key in RESTART_ONLY:
            self.restart_pending.labels(key).set(1 if key in restart_pending else 0)

    def request_done(self, record: RequestRecord, outcome: str, seconds: float) -> None:
        """Count one answered request from what its record says."""
        route = (record.route or UNKNOWN_ROUTE,)
        self.requests.inc((*route, outcome))
        if record.dropped:
            self.dropped_parameters.inc(route, len(record.dropped))
        if record.let_in_by_log_only:
            self.log_only.inc(route)
        if record.outside_allowlist and record.key_valid:
            mode = "log_only" if record.let_in_by_log_only else "enforce"
            self.allowlist_valid_key.inc((*route, mode))
        if record.ymid_check is not None:
            mode = "enforce" if record.ymid_check_enforced else "log_only"
            self.ymid_checks.inc((*route, record.ymid_check, mode))
        if outcome in REJECTIONS:
            reason = record.reason if record.reason in REJECTION_REASONS else "other"
            self.rejections.inc((*route, reason))
        self.request_latency.observe(route, seconds)

    def valued_event_delivered(
        self,
        route: str,
        zone_id: str | None,
        price: str | None,
        named_zones: frozenset[str] = frozenset(),
    ) -> None:
        """Add a delivered valued event's price under its zone: a zone the route's config
        names (`match.zone_id`), one of the first MAX_ZONE_LABELS seen on the route, or
        `other` (a sender chooses zone ids: 2,000 of them made 2,000 series once)."""
        self.valued_postbacks.inc((route,))
        try:
            amount = Decimal(price) if price else Decimal(0)
        except InvalidOperation:
            return  # validation already refused it; nothing to add
        zone = zone_id or ""
        seen = self._zones_seen.setdefault(route, set())
        if zone not in named_zones and zone not in seen:
            if len(seen) >= MAX_ZONE_LABELS:
                zone = OTHER_ZONES
            else:
                seen.add(zone)
        self.valued_price.labels(route, zone).inc(float(amount))

    def queue_snapshot(self, routes: list[tuple[str, dict[str, int], float | None]]) -> None:
        """Set the queue gauges from a fresh count: (route, {state: count}, oldest age)."""
        for route, counts, oldest_age in routes:
            for state in ("pending", "delivered", "dead"):
                self.queue_depth.labels(route, state).set(counts.get(state, 0))
            self.queue_oldest.labels(route).set(oldest_age or 0)

    def upstream_attempt(self, route: str, upstream: str, result: str, seconds: float) -> None:
        self.upstream_attempts.inc((route, upstream, result))
        self.upstream_latency.observe((route, upstream), seconds)
