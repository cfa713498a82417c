"""Operating the real `python -m gateway run` process: reload, metrics, dashboard, drain,
limits, logging.

Every test of the process starts the gateway as a subprocess on free loopback ports in front of
a real HTTP upstream (a `RecordingUpstream` in this process) and talks to it over sockets. Every
wait is bounded; every process is killed in a `finally` if a test leaves it running. The
dashboard's rows and layout are checked on its JSON alone, its metric names against the
gateway's metrics registry and against a running gateway's /metrics.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import re
import signal
import socket
import threading
import time
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import pytest

from gateway.durable.outbox import DEAD, DELIVERED, PENDING, RETRY
from gateway.metrics import Metrics
from tests.conftest import RedisServer, UpstreamFactory
from tests.support import processes
from tests.support.alertrules import alerts
from tests.support.gatewayconfig import gateway_config, route, upstream
from tests.support.metrics import Scrape
from tests.support.processes import (
    REPO,
    SECRET,
    Reply,
    free_port,
    gateway_command,
    http_get,
    spawn_gateway,
)
from tests.support.sessionsconfig import SESSIONS_ENV, sessions_route
from tests.support.upstream import Answer
from tests.support.waiting import eventually

DASHBOARD = REPO / "dashboards" / "monetag-gateway.json"
START_TIMEOUT = 15.0
HTTP_TIMEOUT = 10.0
COMMAND_TIMEOUT = 30.0


# -- helpers ----------------------------------------------------------------------------------


def check_checksum(config: Path) -> str:
    """The checksum `python -m gateway check` prints for a config file."""
    result = gateway_command("check", "--config", str(config), env=processes.command_env())
    assert result.returncode == 0, result.stderr
    match = re.search(r"checksum ([0-9a-f]{16})", result.stdout)
    assert match, result.stdout
    return match.group(1)


# -- the gateway process ----------------------------------------------------------------------


def config_text(
    public_port: int,
    admin_port: int,
    app_url: str,
    *,
    allow_ips: list[str] | None = None,
    server: dict[str, Any] | None = None,
    log_format: str = "json",
    upstream_timeout: str = "5s",
    extra_routes: dict[str, Any] | None = None,
    store: str | None = None,
) -> str:
    """One route `tapper` (allowlist, query secret `token`, one upstream) and server limits;
    with `store` (an SQLite file), the durable store that queued routes need."""
    settings = {
        "listen": f"127.0.0.1:{public_port}",
        "admin_listen": f"127.0.0.1:{admin_port}",
        "reload_interval": 0,
        "shutdown_grace": "5s",
        **(server or {}),
    }
    tapper = route(
        [upstream(app_url, timeout=upstream_timeout, retries=0)],
        allow_ips=allow_ips or ["127.0.0.1"],
        aliases=None,
    )
    return gateway_config(
        server=settings,
        logging={"format": log_format},
        routes={"tapper": tapper, **(extra_routes or {})},
        store=store,
    )


@dataclass
class GatewayProcess(processes.GatewayProcess):
    """The process, and how to rewrite its config from settings (`rewrite`)."""

    builder: Callable[..., str] = field(repr=False)

    # -- talking to it

    def postback(self, path: str = "/postback/tapper", token: str = SECRET, **params: str) -> Reply:
        query = urlencode({**params, "token": token} if token else params)
        return http_get(self.public_port, f"{path}?{query}")

    def admin(self, path: str) -> Reply:
        return http_get(self.admin_port, path)

    def readyz(self) -> tuple[int, dict[str, Any]]:
        reply = self.admin("/readyz")
        return reply.status, reply.json()

    def scrape(self) -> Scrape:
        reply = self.admin("/metrics")
        assert reply.status == 200, reply
        return Scrape.parse(reply.body.decode())

    # -- operating it

    def rewrite(self, **settings: Any) -> None:
        """Replace the config file atomically with one built from `settings`."""
        text = self.builder(self.public_port, self.admin_port, **settings)
        temporary = self.config.with_name(self.config.name + ".new")
        temporary.write_text(text, encoding="utf-8")
        os.replace(temporary, self.config)

    def signal(self, signum: int) -> None:
        self.process.send_signal(signum)

    def public_accepts(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.public_port), timeout=1):
                return True
        except OSError:
            return False

    def is_ready(self) -> bool:
        if self.process.poll() is not None:
            raise AssertionError(
                f"gateway exited with {self.process.returncode}; stderr:\n"
                + self.stderr.read_text(encoding="utf-8")
                + "\nstdout:\n"
                + self.output()
            )
        try:
            status, _ = self.readyz()
        except OSError:
            return False
        return status == 200 and self.public_accepts()


Launcher = Callable[..., GatewayProcess]


@pytest.fixture
def launch(tmp_path: Path) -> Iterator[Launcher]:
    """Start `python -m gateway run` on a config built by `config_text(**settings)`, ready."""
    started: list[GatewayProcess] = []

    def start(upstream_url: str, **settings: Any) -> GatewayProcess:
        index = len(started)
        public_port, admin_port = free_port(), free_port()
        config = tmp_path / f"config{index}.yaml"

        def builder(public: int, admin: int, **overrides: Any) -> str:
            return config_text(public, admin, upstream_url, **{**settings, **overrides})

        config.write_text(builder(public_port, admin_port), encoding="utf-8")
        stdout, stderr = tmp_path / f"stdout{index}.log", tmp_path / f"stderr{index}.log"
        env = processes.command_env(**SESSIONS_ENV)  # a route may have sessions
        process = spawn_gateway(config, env, stdout, stderr)
        running = GatewayProcess(process, config, public_port, admin_port, stdout, stderr, builder)
        started.append(running)
        eventually(running.is_ready, START_TIMEOUT, interval=0.05, explain=stderr.read_text)
        return running

    try:
        yield start
    finally:
        for running in started:
            if running.process.poll() is None:
                running.process.kill()
            running.process.wait(timeout=COMMAND_TIMEOUT)
            assert running.process.poll() is not None


def click(ymid: str, **extra: str) -> dict[str, str]:
    return {"ymid": ymid, "event_type": "click", "zone_id": "42", **extra}


def first_forwarded(gw: GatewayProcess) -> Reply:
    """Send a new click until one is answered 200 (a change has taken effect): that reply."""
    attempts = itertools.count()

    def forwarded() -> Reply | None:
        reply = gw.postback(**click(f"after-{next(attempts)}"))
        return reply if reply.status == 200 else None

    return eventually(forwarded, 5.0, interval=0.05)


# -- 1-4: live reload -------------------------------------------------------------------------


@pytest.mark.process
def test_sighup_reload_changes_behaviour_and_checksum(
    launch: Launcher, start_upstream: UpstreamFactory
) -> None:
    app = start_upstream(body="UPSTREAM-OK")
    gw = launch(app.postback_url, allow_ips=["10.9.9.9"])
    old_checksum = check_checksum(gw.config)
    assert gw.readyz() == (200, {"status": "ready", "config_checksum": old_checksum})
    before = gw.scrape()

    refused = gw.postback(**click("before"))
    assert (refused.status, refused.outcome) == (403, "rejected")
    assert app.count() == 0

    gw.rewrite(allow_ips=["127.0.0.1"])
    new_checksum = check_checksum(gw.config)
    assert new_checksum != old_checksum
    gw.signal(signal.SIGHUP)

    reply = first_forwarded(gw)  # the reloaded allowlist lets 127.0.0.1 in
    assert reply.outcome == "forwarded"
    assert reply.body == b"UPSTREAM-OK"
    assert gw.readyz() == (200, {"status": "ready", "config_checksum": new_checksum})

    after = gw.scrape()
    success = "gateway_config_reloads_total"
    assert after.value(success, result="success") == before.value(success, result="success") + 1
    assert after.value(success, result="failure") == 0
    reloaded = [line for line in gw.json_lines() if line.get("message") == "config reloaded"]
    assert [line.get("trigger") for line in reloaded] == ["SIGHUP"], reloaded
    assert reloaded[0].get("config_checksum") == new_checksum


@pytest.mark.process
def test_a_reload_that_needs_a_restart_says_so_everywhere_and_keeps_serving(
    launch: Launcher, start_upstream: UpstreamFactory
) -> None:
    # Before: `config reloaded` and the new checksum in /readyz, while the gateway went on
    # listening on the old port.
    app = start_upstream()
    gw = launch(app.postback_url)
    elsewhere = free_port()
    gw.rewrite(server={"listen": f"127.0.0.1:{elsewhere}"})
    new_checksum = check_checksum(gw.config)
    gw.signal(signal.SIGHUP)

    def reloaded() -> dict[str, Any] | None:
        lines = [line for line in gw.json_lines() if "restart" in line.get("message", "")]
        return lines[0] if lines else None

    line = eventually(reloaded, 10.0)
    assert line["level"] == "warning" and line["restart_pending"] == ["server.listen"], line
    assert gw.readyz() == (
        200,
        {"status": "ready", "config_checksum": new_checksum, "restart_pending": ["server.listen"]},
    )
    scrape = gw.scrape()
    assert scrape.value("gateway_config_restart_pending", key="server.listen") == 1
    assert scrape.value("gateway_config_restart_pending", key="store") == 0
    assert gw.postback(**click("still-here")).outcome == "forwarded"  # the old port, in force
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", elsewhere), timeout=2).close()


@pytest.mark.process
def test_invalid_edit_keeps_the_running_config(
    launch: Launcher, start_upstream: UpstreamFactory
) -> None:
    app = start_upstream()
    gw = launch(app.postback_url)
    checksum = check_checksum(gw.config)
    assert gw.postback(**click("good-1")).status == 200

    gw.rewrite(allow_ips=["not-an-ip"])
    gw.signal(signal.SIGHUP)

    def failed_once() -> Scrape | None:
        scrape = gw.scrape()
        return scrape if scrape.value("gateway_config_reloads_total", result="failure") else None

    scrape = eventually(failed_once, 5.0)
    assert scrape.value("gateway_config_reloads_total", result="failure") == 1.0
    assert scrape.value("gateway_config_reloads_total", result="success") == 1.0  # the start

    reply = gw.postback(**click("good-2"))
    assert (reply.status, reply.outcome) == (200, "forwarded")
    assert gw.readyz() == (200, {"status": "ready", "config_checksum": checksum})
    assert app.count() == 2

    failures = [
        line
        for line in gw.json_lines()
        if str(line.get("message", "")).startswith("config reload failed")
    ]
    assert len(failures) == 1, gw.output()
    assert failures[0]["level"] == "error"
    assert failures[0]["trigger"] == "SIGHUP"
    problems = failures[0]["problems"]
    assert any(problem.startswith("routes.tapper.allow_ips[0]") for problem in problems), problems
    assert SECRET not in gw.output()


@pytest.mark.process
def test_file_change_reloads_without_sighup(
    launch: Launcher, start_upstream: UpstreamFactory
) -> None:
    app = start_upstream()
    server = {"reload_interval": "200ms"}
    gw = launch(app.postback_url, allow_ips=["10.9.9.9"], server=server)
    assert gw.postback(**click("before")).status == 403

    gw.rewrite(allow_ips=["127.0.0.1"])
    new_checksum = check_checksum(gw.config)
    reply = first_forwarded(gw)  # the file change is picked up
    assert reply.outcome == "forwarded"
    assert gw.readyz()[1]["config_checksum"] == new_checksum
    reloaded = [line for line in gw.json_lines() if line.get("message") == "config reloaded"]
    assert [line.get("trigger") for line in reloaded] == ["file changed"], reloaded


@pytest.mark.process
def test_dedup_memory_survives_a_reload(launch: Launcher, start_upstream: UpstreamFactory) -> None:
    app = start_upstream()
    gw = launch(app.postback_url, upstream_timeout="5s")
    first = gw.postback(**click("once"))
    assert (first.status, first.outcome) == (200, "forwarded")

    gw.rewrite(upstream_timeout="3s")
    new_checksum = check_checksum(gw.config)
    gw.signal(signal.SIGHUP)
    eventually(lambda: gw.readyz()[1]["config_checksum"] == new_checksum, 5.0)

    again = gw.postback(**click("once"))
    assert (again.status, again.outcome) == (200, "duplicate")
    assert app.count() == 1
    assert gw.scrape().value("gateway_dedup_entries", route="tapper") == 1


# -- 5-6: metrics -----------------------------------------------------------------------------


@pytest.mark.process
def test_metrics_move_by_exactly_what_was_sent(
    launch: Launcher, start_upstream: UpstreamFactory
) -> None:
    app = start_upstream()
    gw = launch(app.postback_url)
    before = gw.scrape()
    valued = click("valued-1", event_type="impression", reward_event_type="valued")
    valued["estimated_price"] = "0.0123"

    replies = {
        "forwarded": gw.postback(**valued),
        "duplicate": gw.postback(**valued),
        "secret": gw.postback(token="wrong-key", **click("bad-secret")),
        "invalid": gw.postback(**click("bad-zone", zone_id="abc")),
        "unknown": gw.postback("/postback/nope", **click("nowhere")),
    }
    outcomes = {name: (reply.status, reply.outcome) for name, reply in replies.items()}
    assert outcomes == {
        "forwarded": (200, "forwarded"),
        "duplicate": (200, "duplicate"),
        "secret": (403, "rejected"),
        "invalid": (400, "invalid"),
        "unknown": (404, "not_found"),
    }
    after = gw.scrape()

    def moved(name: str, **labels: str) -> float:
        return after.value(name, **labels) - before.value(name, **labels)

    requests = "gateway_requests_total"
    assert moved(requests, route="tapper", outcome="forwarded") == 1
    assert moved(requests, route="tapper", outcome="duplicate") == 1
    assert moved(requests, route="tapper", outcome="rejected") == 1
    assert moved(requests, route="tapper", outcome="invalid") == 1
    assert moved(requests, route="unknown", outcome="not_found") == 1
    rejections = "gateway_rejections_total"
    assert moved(rejections, route="tapper", reason="secret_wrong") == 1
    assert moved(rejections, route="tapper", reason="invalid_fields") == 1
    assert moved(rejections, route="tapper", reason="ip_not_allowed") == 0
    attempts = "gateway_upstream_attempts_total"
    assert moved(attempts, route="tapper", upstream=app.label, status_class="2xx") == 1
    durations = "gateway_request_duration_seconds_count"
    assert moved(durations, route="tapper") == 4
    assert moved(durations, route="unknown") == 1
    assert after.value("gateway_dedup_entries", route="tapper") == 1
    assert after.has("gateway_build_info", version=_version())
    assert after.value("gateway_build_info", version=_version()) == 1
    price = "gateway_valued_estimated_price_usd_total"
    assert after.value(price, route="tapper", zone_id="42") == pytest.approx(0.0123)
    assert app.count() == 1

    not_valued = click("not-valued-1", reward_event_type="not_valued", estimated_price="0.5")
    assert gw.postback(**not_valued).outcome == "forwarded"
    last = gw.scrape()
    assert last.value(price, route="tapper", zone_id="42") == pytest.approx(0.0123)
    assert last.value("gateway_dedup_entries", route="tapper") == 2
    assert last.value(requests, route="tapper", outcome="forwarded") == 2
    assert SECRET not in last.text and "wrong-key" not in last.text


def _version() -> str:
    match = re.search(r'__version__ = "([^"]+)"', (REPO / "gateway" / "__init__.py").read_text())
    assert match
    return match.group(1)


# -- 6: the dashboard -------------------------------------------------------------------------

DATASOURCE = {"type": "prometheus", "uid": "${datasource}"}
GRID_WIDTH = 24
METRIC_USE = re.compile(r"\b(gateway_[a-z0-9_]+)(?:\{([^}]*)\})?")  # a name, its {matchers}
MATCHER_LABEL = re.compile(r"([A-Za-z_][A-Za-z0-9_]*)\s*(?:=~|!~|!=|=)")
GROUPING = re.compile(r"\bby\s*\(([^)]*)\)")
TARGET_LABELS = frozenset({"instance", "job"})  # Prometheus adds them to every scraped sample
ROUTE_FILTER = 'route=~"$route"'
# what one metric family of the registry is exposed as, by its type (text format)
SAMPLE_SUFFIXES = {
    "counter": ("_total",),
    "gauge": ("",),
    "histogram": ("_bucket", "_count", "_sum"),
}

# The rows for the durable queue, the store and Redis:
# row title -> panel title -> (unit, what the panel's queries must contain).
PanelSpec = tuple[str, tuple[str, ...]]
REQUIRED_ROWS: dict[str, dict[str, PanelSpec]] = {
    "Queue (delivery: queued)": {
        "Queue depth (pending) by route": (
            "short",
            ("gateway_queue_deliveries{", f'state="{PENDING}"', ROUTE_FILTER),
        ),
        "Oldest pending delivery age by route": (
            "s",
            ("gateway_queue_oldest_pending_age_seconds{", ROUTE_FILTER),
        ),
        "Deliveries/s by result": (
            "reqps",
            ("by (result)", "rate(gateway_deliveries_total{", ROUTE_FILTER),
        ),
        "Dead letters by route": (
            "short",
            ("gateway_queue_deliveries{", f'state="{DEAD}"', ROUTE_FILTER),
        ),
    },
    "Store": {
        "Store up": ("short", ("gateway_store_up",)),
        "Store commits/s": ("ops", ("rate(gateway_store_commits_total[",)),
        "Store failures/s": ("ops", ("rate(gateway_store_failures_total[",)),
    },
    "Redis (shared dedup)": {
        "Redis latency p50 / p99 by operation": (
            "s",
            (
                "histogram_quantile(0.5, sum by (le, operation) "
                "(rate(gateway_redis_duration_seconds_bucket[",
                "histogram_quantile(0.99, sum by (le, operation) "
                "(rate(gateway_redis_duration_seconds_bucket[",
            ),
        ),
        "Redis errors/s by operation": (
            "ops",
            ("by (operation)", "rate(gateway_redis_errors_total["),
        ),
        "Dedup fallbacks/s by route (fail_open)": (
            "reqps",
            ("rate(gateway_dedup_fallbacks_total{", ROUTE_FILTER),
        ),
    },
    "Reward sessions (routes with sessions:)": {
        "Ymids issued/s by placement": (
            "reqps",
            ("by (placement)", "rate(gateway_ymids_issued_total{", ROUTE_FILTER),
        ),
        "Ymid requests refused/s by reason": (
            "reqps",
            ("by (reason)", "rate(gateway_ymid_requests_refused_total{", ROUTE_FILTER),
        ),
        "Postback ymid checks/s by result": (
            "reqps",
            ("by (result, mode)", "rate(gateway_ymid_checks_total{", ROUTE_FILTER),
        ),
        "Ymids with no postback (1h) by placement": (
            "short",
            ("by (placement)", "increase(gateway_ymids_no_postback_total{", ROUTE_FILTER),
        ),
    },
}


def load_dashboard() -> dict[str, Any]:
    dashboard: dict[str, Any] = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    return dashboard


def _all_panels(node: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """Every panel, rows and the panels a collapsed row holds included."""
    for panel in node.get("panels", []):
        yield panel
        yield from _all_panels(panel)


def _dashboard_exprs(node: Any) -> Iterator[str]:
    """Every PromQL string of the dashboard: panel target `expr`s and variable queries."""
    if isinstance(node, dict):
        for key, value in node.items():
            if key in ("expr", "query", "definition") and isinstance(value, str):
                yield value
            else:
                yield from _dashboard_exprs(value)
    elif isinstance(node, list):
        for item in node:
            yield from _dashboard_exprs(item)


def target_exprs(dashboard: dict[str, Any]) -> list[str]:
    return [
        target["expr"]
        for panel in _all_panels(dashboard)
        for target in panel.get("targets", [])
        if "expr" in target
    ]


def metric_names(dashboard: dict[str, Any]) -> set[str]:
    """Every gateway_ sample name a panel or a variable reads."""
    return {name for expr in _dashboard_exprs(dashboard) for name, _ in METRIC_USE.findall(expr)}


def defined_sample_names() -> set[str]:
    """The sample names the gateway's Metrics can expose, from its own registry, with every
    metric registered only under some config (the store's) registered too."""
    metrics = Metrics()
    metrics.watch_store(lambda: True)
    metrics.watch_dedup(lambda: {})
    names: set[str] = set()
    for family in metrics.registry.collect():
        assert family.type in SAMPLE_SUFFIXES, f"{family.name}: type {family.type} not mapped"
        names.update(family.name + suffix for suffix in SAMPLE_SUFFIXES[family.type])
    return names


def undefined_metrics(dashboard: dict[str, Any]) -> list[str]:
    return sorted(metric_names(dashboard) - defined_sample_names())


def label_problems(exprs: list[str], labels_of: dict[str, set[str]]) -> list[str]:
    """What a query asks of labels its metrics do not have: a matcher or a `by` on a missing
    label (the panel would be silently empty), or a metric with a route label the Route
    variable does not filter."""
    problems = []
    for expr in exprs:
        uses = METRIC_USE.findall(expr)
        available = set(TARGET_LABELS).union(*(labels_of.get(name, set()) for name, _ in uses))
        for name, matchers in uses:
            labels = labels_of.get(name, set())
            problems += [
                f"{name} has no label {label!r}: {expr}"
                for label in MATCHER_LABEL.findall(matchers)
                if label not in labels
            ]
            if "route" in labels and ROUTE_FILTER not in matchers:
                problems.append(f"{name} is not filtered by $route: {expr}")
        for grouping in GROUPING.findall(expr):
            labels = {label.strip() for label in grouping.split(",") if label.strip()}
            problems += [f"no metric has {label!r}: {expr}" for label in labels - available]
    return problems


def rows_of(dashboard: dict[str, Any]) -> dict[str, list[dict[str, Any]]]:
    """Each row's panels, by row title: a collapsed row holds its own, an open one has the
    panels placed below it, down to the next row."""
    rows: dict[str, list[dict[str, Any]]] = {}
    current: list[dict[str, Any]] | None = None
    placed = sorted(dashboard["panels"], key=lambda p: (p["gridPos"]["y"], p["gridPos"]["x"]))
    for panel in placed:
        if panel["type"] == "row":
            assert panel["title"] not in rows, f"two rows titled {panel['title']!r}"
            current = rows[panel["title"]] = list(panel.get("panels", []))
        elif current is not None:
            current.append(panel)
    return rows


def row_problems(dashboard: dict[str, Any]) -> list[str]:
    """Each of REQUIRED_ROWS missing, or its panels missing, in another unit, or not reading
    what they should."""
    rows = rows_of(dashboard)
    problems = []
    for row_title, wanted in REQUIRED_ROWS.items():
        if row_title not in rows:
            problems.append(f"no row {row_title!r}")
            continue
        panels = {panel["title"]: panel for panel in rows[row_title]}
        for title, (unit, needles) in wanted.items():
            panel = panels.get(title)
            if panel is None:
                problems.append(f"row {row_title!r} has no panel {title!r}")
                continue
            actual = panel.get("fieldConfig", {}).get("defaults", {}).get("unit")
            if actual != unit:
                problems.append(f"{title!r}: unit {actual!r}, not {unit!r}")
            exprs = "\n".join(target.get("expr", "") for target in panel.get("targets", []))
            problems += [
                f"{title!r} does not read {needle!r}" for needle in needles if needle not in exprs
            ]
    return problems


def _overlap(a: dict[str, int], b: dict[str, int]) -> bool:
    return (
        a["x"] < b["x"] + b["w"]
        and b["x"] < a["x"] + a["w"]
        and a["y"] < b["y"] + b["h"]
        and b["y"] < a["y"] + a["h"]
    )


def layout_problems(dashboard: dict[str, Any]) -> list[str]:
    """Panel ids used twice; panels outside the 24-column grid or on top of each other (among
    the dashboard's own panels, and among those each collapsed row holds)."""
    ids = Counter(panel.get("id") for panel in _all_panels(dashboard))
    problems = [f"panel id {pid!r} used {count} times" for pid, count in ids.items() if count > 1]
    groups = [dashboard["panels"]] + [
        row["panels"] for row in dashboard["panels"] if row["type"] == "row" and row["panels"]
    ]
    for group in groups:
        for panel in group:
            grid = panel["gridPos"]
            if min(grid["x"], grid["y"]) < 0 or min(grid["w"], grid["h"]) <= 0:
                problems.append(f"{panel['title']!r}: gridPos {grid}")
            elif grid["x"] + grid["w"] > GRID_WIDTH:
                problems.append(f"{panel['title']!r} is wider than the grid: {grid}")
        problems += [
            f"{a['title']!r} {a['gridPos']} overlaps {b['title']!r} {b['gridPos']}"
            for a, b in itertools.combinations(group, 2)
            if _overlap(a["gridPos"], b["gridPos"])
        ]
    return problems


def convention_problems(dashboard: dict[str, Any]) -> list[str]:
    """A panel or a query not on the `datasource` variable; a schema other than 39."""
    problems = []
    if dashboard.get("schemaVersion") != 39:
        problems.append(f"schemaVersion {dashboard.get('schemaVersion')!r}, not 39")
    for panel in _all_panels(dashboard):
        if panel["type"] == "row":
            continue
        sources = [panel.get("datasource")] + [t.get("datasource") for t in panel["targets"]]
        if any(source != DATASOURCE for source in sources):
            problems.append(f"{panel['title']!r} is not on ${{datasource}}: {sources}")
    return problems


def test_every_dashboard_metric_is_defined_by_the_gateway() -> None:
    """Cheap and complete: against the Metrics registry, store-only and Redis-only ones too."""
    dashboard = load_dashboard()
    assert metric_names(dashboard), "no gateway_ metric in the dashboard"
    defined = defined_sample_names()
    assert {"gateway_store_up", "gateway_redis_duration_seconds_bucket"} <= defined
    undefined = undefined_metrics(dashboard)
    assert not undefined, f"dashboard metrics gateway/metrics.py does not define: {undefined}"


@pytest.mark.process
def test_every_dashboard_metric_is_exposed(
    launch: Launcher, start_upstream: UpstreamFactory, redis_server: RedisServer, tmp_path: Path
) -> None:
    """A gateway with every feature the dashboard shows (a log_only route, a queued route on
    a store, a route deduplicating through Redis with fail_open, a route with reward
    sessions) and traffic through each has a sample of every metric the dashboard reads, with
    the labels its queries use."""
    app = start_upstream()
    once = [{"url": app.postback_url, "retries": 0}]
    spinner = route(once, allow_ips=["10.9.9.9"], allow_ips_mode="log_only", aliases=None)
    queue = {"retry_base": "100ms", "retry_cap": "500ms"}
    queued = route(once, allow_ips=["127.0.0.1"], delivery="queued", queue=queue, aliases=None)
    redis_dedup = {"backend": "redis", "redis_url": redis_server.url, "on_redis_error": "fail_open"}
    shared = route(once, allow_ips=["127.0.0.1"], dedup=redis_dedup, aliases=None)
    gw = launch(
        app.postback_url,
        store=str(tmp_path / "gateway.db"),
        extra_routes={
            "spinner": spinner,
            "queued": queued,
            "shared": shared,
            "miniapp": sessions_route(app.postback_url),
        },
    )
    valued = click("dash-1", reward_event_type="valued", estimated_price="0.01")
    assert gw.postback(**valued).outcome == "forwarded"
    assert gw.postback(**valued).outcome == "duplicate"
    assert gw.postback(token="nope", **click("dash-2")).outcome == "rejected"
    assert gw.postback(**click("dash-3", zone_id="x")).outcome == "invalid"
    assert gw.postback("/nope", **click("dash-4")).outcome == "not_found"
    assert gw.postback("/postback/spinner", **click("dash-5")).outcome == "forwarded"
    assert gw.postback("/postback/queued", **click("dash-6")).outcome == "queued"
    assert gw.postback("/postback/shared", **click("dash-7")).outcome == "forwarded"
    redis_server.stop()  # fail_open: Redis errors, then dedup by this replica's memory only
    assert gw.postback("/postback/shared", **click("dash-8")).outcome == "forwarded"
    # reward sessions: a ymid the gateway never issued, and a request for one that is no JSON
    assert gw.postback("/postback/miniapp", **click("dash-9")).outcome == "rejected"
    asked = urllib.request.Request(
        f"http://127.0.0.1:{gw.public_port}/ymid/miniapp", data=b"not json", method="POST"
    )
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(asked, timeout=10)
    assert refused.value.code == 400

    dashboard = load_dashboard()
    exprs = target_exprs(dashboard)
    assert exprs, "the dashboard has no PromQL targets"
    used = metric_names(dashboard)
    assert used, "no gateway_ metric in the dashboard"

    def every_one_sampled() -> Scrape | None:  # the queue gauges follow every few seconds
        scrape = gw.scrape()
        return scrape if used <= scrape.sample_names else None

    def unsampled() -> str:
        return f"dashboard metrics with no samples: {sorted(used - gw.scrape().sample_names)}"

    scrape = eventually(every_one_sampled, 15.0, interval=0.2, explain=unsampled)
    delivered = {"route": "queued", "upstream": app.label, "result": DELIVERED}
    assert scrape.value("gateway_deliveries_total", **delivered) == 1
    assert scrape.value("gateway_store_up") == 1
    assert scrape.value("gateway_dedup_fallbacks_total", route="shared") == 1
    problems = label_problems(exprs, scrape.label_names)
    assert not problems, "\n".join(problems)


def test_dashboard_has_queue_store_and_redis_rows() -> None:
    dashboard = load_dashboard()
    problems = row_problems(dashboard)
    assert not problems, "\n".join(problems)
    panels = {panel["title"]: panel for panel in _all_panels(dashboard)}

    results = panels["Deliveries/s by result"]["fieldConfig"]["overrides"]
    colored = {override["matcher"]["options"] for override in results}
    assert colored == {DELIVERED, RETRY, DEAD}  # the deliverer's results, each its own colour

    store_up = panels["Store up"]
    assert store_up["type"] == "stat"
    mapped = {
        value: (mapping["text"], mapping["color"])
        for entry in store_up["fieldConfig"]["defaults"]["mappings"]
        for value, mapping in entry["options"].items()
    }
    assert mapped == {"0": ("down", "red"), "1": ("up", "green")}
    steps = store_up["fieldConfig"]["defaults"]["thresholds"]["steps"]
    assert [(step["color"], step["value"]) for step in steps] == [("red", None), ("green", 1)]


def test_dashboard_layout_ids_and_datasource() -> None:
    dashboard = load_dashboard()
    problems = layout_problems(dashboard) + convention_problems(dashboard)
    assert not problems, "\n".join(problems)


def _panel(dashboard: dict[str, Any], title: str) -> dict[str, Any]:
    return next(panel for panel in _all_panels(dashboard) if panel["title"] == title)


def _overlapping(dashboard: dict[str, Any]) -> None:
    _panel(dashboard, "Store commits/s")["gridPos"]["x"] = 3


def _wider_than_the_grid(dashboard: dict[str, Any]) -> None:
    _panel(dashboard, "Store failures/s")["gridPos"]["w"] = 10


def _id_twice(dashboard: dict[str, Any]) -> None:
    _panel(dashboard, "Store up")["id"] = _panel(dashboard, "Build info")["id"]


def _panel_gone(dashboard: dict[str, Any]) -> None:
    dashboard["panels"].remove(_panel(dashboard, "Dead letters by route"))


def _row_renamed(dashboard: dict[str, Any]) -> None:
    _panel(dashboard, "Redis (shared dedup)")["title"] = "Redis"


def _wrong_state(dashboard: dict[str, Any]) -> None:
    target = _panel(dashboard, "Queue depth (pending) by route")["targets"][0]
    target["expr"] = target["expr"].replace(f'"{PENDING}"', '"waiting"')


def _metric_renamed(dashboard: dict[str, Any]) -> None:
    target = _panel(dashboard, "Oldest pending delivery age by route")["targets"][0]
    target["expr"] = target["expr"].replace("oldest_pending_age", "oldest_age")


def _counter_without_total(dashboard: dict[str, Any]) -> None:
    target = _panel(dashboard, "Store commits/s")["targets"][0]
    target["expr"] = target["expr"].replace("commits_total", "commits")


def _own_datasource(dashboard: dict[str, Any]) -> None:
    _panel(dashboard, "Store up")["targets"][0]["datasource"] = {"uid": "prometheus-prod"}


@pytest.mark.parametrize(
    ("spoil", "check"),
    [
        (_overlapping, layout_problems),
        (_wider_than_the_grid, layout_problems),
        (_id_twice, layout_problems),
        (_panel_gone, row_problems),
        (_row_renamed, row_problems),
        (_wrong_state, row_problems),
        (_own_datasource, convention_problems),
        (_metric_renamed, undefined_metrics),
        (_counter_without_total, undefined_metrics),
    ],
    ids=lambda value: getattr(value, "__name__", "").strip("_"),
)
def test_the_dashboard_checks_catch(
    spoil: Callable[[dict[str, Any]], None], check: Callable[[dict[str, Any]], list[str]]
) -> None:
    dashboard = load_dashboard()
    assert check(dashboard) == []
    spoil(dashboard)
    assert check(dashboard) != []


def test_the_label_check_catches() -> None:
    labels_of = {
        "gateway_store_commits_total": set(),
        "gateway_queue_deliveries": {"route", "state"},
        "gateway_redis_errors_total": {"operation"},
    }
    assert label_problems(['sum(gateway_queue_deliveries{route=~"$route"})'], labels_of) == []
    spoiled = [
        'sum(rate(gateway_store_commits_total{route=~"$route"}[5m]))',  # no such label
        "sum by (route) (rate(gateway_redis_errors_total[5m]))",  # grouped by a missing label
        'max by (route) (gateway_queue_deliveries{state="pending"})',  # Route not applied
    ]
    for expr in spoiled:
        assert label_problems([expr], labels_of), expr


# -- 7: drain ---------------------------------------------------------------------------------


@pytest.mark.process
def test_sigterm_drains_a_slow_request_then_exits_0(
    launch: Launcher, start_upstream: UpstreamFactory
) -> None:
    app = start_upstream(default=Answer(delay=1.5), body="SLOW-BUT-DONE")
    grace = 5.0
    gw = launch(app.postback_url, server={"drain_delay": "500ms", "shutdown_grace": f"{grace}s"})
    checksum = gw.readyz()[1]["config_checksum"]

    with ThreadPoolExecutor(max_workers=1) as pool:
        pending = pool.submit(gw.postback, **click("slow-1"))
        eventually(app.count)  # the postback is at the upstream, held there
        signalled = time.monotonic()
        gw.signal(signal.SIGTERM)

        seen: list[tuple[int, dict[str, Any]]] = []

        def draining() -> bool:
            try:
                seen.append(gw.readyz())
            except OSError:
                return True  # admin is gone: stop looking
            return seen[-1][0] == 503

        eventually(draining, 3.0)
        reply = pending.result(timeout=grace + 5)

    assert (503, {"status": "draining", "config_checksum": checksum}) in seen, seen
    assert (reply.status, reply.outcome) == (200, "forwarded")
    assert reply.body == b"SLOW-BUT-DONE"
    assert gw.process.wait(timeout=grace + 5) == 0
    assert time.monotonic() - signalled < grace
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", gw.public_port), timeout=2).close()
    messages = [line.get("message") for line in gw.json_lines()]
    assert "draining" in messages and messages[-1] == "stopped", messages


# -- 8-10: limits -----------------------------------------------------------------------------


@pytest.mark.process
def test_overload_answers_503_with_retry_after(
    launch: Launcher, start_upstream: UpstreamFactory
) -> None:
    app = start_upstream(default=Answer(delay=1.0))
    gw = launch(app.postback_url, server={"max_in_flight": 2})
    barrier = threading.Barrier(6, timeout=5)

    def send(number: int) -> Reply:
        barrier.wait()
        return gw.postback(**click(f"crowd-{number}"))

    with ThreadPoolExecutor(max_workers=6) as pool:
        replies = list(pool.map(send, range(6), timeout=15))

    forwarded = [reply for reply in replies if reply.status == 200]
    overloaded = [reply for reply in replies if reply.status == 503]
    summary = [(reply.status, reply.outcome) for reply in replies]
    assert len(forwarded) == 2 and len(overloaded) == 4, summary
    assert all(reply.outcome == "forwarded" for reply in forwarded), summary
    for reply in overloaded:
        assert reply.outcome == "overloaded"
        assert reply.headers.get("Retry-After") == "1"
    assert app.count() == 2
    scrape = gw.scrape()
    assert (
        scrape.value("gateway_requests_total", route="unknown", outcome="overloaded")
        + (scrape.value("gateway_requests_total", route="tapper", outcome="overloaded"))
        == 4
    )
    assert scrape.value("gateway_requests_in_flight") == 0


@pytest.mark.process
def test_long_query_is_answered_414(launch: Launcher, start_upstream: UpstreamFactory) -> None:
    app = start_upstream()
    gw = launch(app.postback_url, server={"max_query_length": 100})

    long = gw.postback(**click("long-1", padding="p" * 200))
    assert (long.status, long.outcome) == (414, "invalid")
    short = gw.postback(**click("short-1"))
    assert (short.status, short.outcome) == (200, "forwarded")
    assert app.count() == 1


@pytest.mark.process
def test_slow_client_is_disconnected_after_client_timeout(
    launch: Launcher, start_upstream: UpstreamFactory
) -> None:
    app = start_upstream()
    gw = launch(app.postback_url, server={"client_timeout": "500ms"})

    with socket.create_connection(("127.0.0.1", gw.public_port), timeout=5) as client:
        client.sendall(b"GET /postback/tapper?")
        started = time.monotonic()
        client.settimeout(5.0)
        closed = False
        try:
            while time.monotonic() - started < 5.0:
                if client.recv(4096) == b"":
                    closed = True
                    break
        except (ConnectionResetError, BrokenPipeError):
            closed = True
        except TimeoutError:
            closed = False
        elapsed = time.monotonic() - started

    assert closed, f"the connection was still open after {elapsed:.1f}s"
    assert elapsed < 2.0, elapsed
    assert app.count() == 0
    assert gw.postback(**click("after-slowloris")).status == 200  # still serving


# -- 11: logging ------------------------------------------------------------------------------


@pytest.mark.process
def test_text_log_format(launch: Launcher, start_upstream: UpstreamFactory) -> None:
    app = start_upstream()
    gw = launch(app.postback_url, log_format="text")
    assert gw.postback(**click("text-1")).outcome == "forwarded"
    assert gw.stop() == 0

    lines = [line for line in gw.output().splitlines() if line.strip()]
    assert lines
    for line in lines:
        with contextlib.suppress(json.JSONDecodeError):
            parsed = json.loads(line)
            assert not isinstance(parsed, dict), f"a JSON log line in text mode: {line}"
    assert any("listening" in line for line in lines), lines
    access = [line for line in lines if 'outcome="forwarded"' in line]
    assert len(access) == 1 and "text-1" in access[0], lines
    assert SECRET not in gw.output()


@pytest.mark.process
def test_shutdown_has_one_deadline_and_logs_the_postback_it_cuts_off(
    launch: Launcher, start_upstream: UpstreamFactory
) -> None:
    # Before: with shutdown_grace 2s, one request in flight and one copy pending, the process
    # took 6.2 s to exit (the listener, each retiring config and the deliverer waited a full
    # grace each), and the postback cut off left no log line.
    app = start_upstream(
        default=lambda number, received: Answer(
            delay=30.0 if received.query["ymid"] == "held" else 0.0
        )
    )
    copies = start_upstream(default=Answer(delay=30.0))  # a copy that never finishes
    slow = {"timeout": "60s", "retries": 0}
    fanout = route(
        [{"url": app.postback_url, **slow}, {"url": copies.postback_url, **slow}],
        allow_ips=["127.0.0.1"],
        aliases=None,
        deadline="60s",
    )
    grace = 2.0
    gw = launch(
        app.postback_url, server={"shutdown_grace": f"{grace:g}s"}, extra_routes={"fanout": fanout}
    )
    assert gw.postback("/postback/fanout", **click("copied")).outcome == "forwarded"
    eventually(copies.count)  # the copy is at the second upstream, held there

    with ThreadPoolExecutor(max_workers=1) as pool:
        pool.submit(gw.postback, "/postback/fanout", **click("held"))
        eventually(lambda: app.count() == 2)  # the second postback is at the app, held
        signalled = time.monotonic()
        gw.signal(signal.SIGTERM)
        assert gw.process.wait(timeout=grace + 10) == 0
        exited_after = time.monotonic() - signalled

    assert exited_after < grace + 1.0, exited_after  # one deadline, not one per stage
    lines = gw.json_lines()
    (cut,) = [line for line in lines if line.get("ymid") == "held"]
    assert (cut["outcome"], cut["reason"], cut["status"]) == ("cut_off", "shutdown", None)
    assert "the app may have received it" in cut["detail"]
    assert lines[-1]["message"] == "stopped"


def test_the_dashboard_shows_the_shipped_alerts_states() -> None:
    """The first row: what the shipped rules say now, for the selected routes; its selector
    catches every alert of alerts.yml (all named Gateway...)."""
    names = [rule["alert"] for rule in alerts()]
    assert names and all(name.startswith("Gateway") for name in names)
    dashboard = load_dashboard()
    first = min(dashboard["panels"], key=lambda p: (p["gridPos"]["y"], p["gridPos"]["x"]))
    assert first["type"] == "row" and first["title"] == "Alerts (deploy/prometheus/alerts.yml)"
    panels = rows_of(dashboard)[first["title"]]
    exprs = [target["expr"] for panel in panels for target in panel["targets"]]
    assert exprs and all('ALERTS{alertname=~"Gateway.*", route=~"$route|"' in e for e in exprs)
    assert any('alertstate="firing"' in expr for expr in exprs)
