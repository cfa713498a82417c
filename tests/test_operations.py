"""Operating the real `python -m gateway run` process: reload, metrics, drain, limits, logging.

Every test starts the gateway as a subprocess on free loopback ports in front of a real HTTP
upstream (a `RecordingUpstream` in this process) and talks to it over sockets. Every wait is
bounded; every process is killed in a `finally` if a test leaves it running.
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
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests import processes
from tests.conftest import UpstreamFactory
from tests.gatewayconfig import gateway_config, route, upstream
from tests.processes import Reply, free_port, gateway_command, http_get, spawn_gateway
from tests.upstream import Answer
from tests.waiting import eventually

REPO = Path(__file__).resolve().parents[1]
DASHBOARD = REPO / "dashboards" / "monetag-gateway.json"
SECRET = "ops-secret-value-789"
START_TIMEOUT = 15.0
HTTP_TIMEOUT = 10.0
COMMAND_TIMEOUT = 30.0


# -- helpers ----------------------------------------------------------------------------------


def command_env() -> dict[str, str]:
    return processes.command_env(SECRET)


def check_checksum(config: Path) -> str:
    """The checksum `python -m gateway check` prints for a config file."""
    result = gateway_command("check", "--config", str(config), env=command_env())
    assert result.returncode == 0, result.stderr
    match = re.search(r"checksum ([0-9a-f]{16})", result.stdout)
    assert match, result.stdout
    return match.group(1)


@dataclass
class Scrape:
    """One /metrics scrape: raw text and every sample by (name, labels)."""

    text: str
    samples: dict[tuple[str, frozenset[tuple[str, str]]], float]

    @classmethod
    def parse(cls, text: str) -> Scrape:
        samples = {
            (sample.name, frozenset(sample.labels.items())): sample.value
            for family in text_string_to_metric_families(text)
            for sample in family.samples
        }
        return cls(text, samples)

    def value(self, name: str, **labels: str) -> float:
        """A sample's value; 0 when the series does not exist (yet)."""
        return self.samples.get((name, frozenset(labels.items())), 0.0)

    def has(self, name: str, **labels: str) -> bool:
        return (name, frozenset(labels.items())) in self.samples

    @property
    def sample_names(self) -> set[str]:
        return {name for name, _ in self.samples}


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
) -> str:
    """One route `tapper` (allowlist, query secret `token`, one upstream) and server limits."""
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
        process = spawn_gateway(config, command_env(), stdout, stderr)
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
    assert moved(attempts, route="tapper", upstream=app.postback_url, status_class="2xx") == 1
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


def test_every_dashboard_metric_is_exposed(
    launch: Launcher, start_upstream: UpstreamFactory
) -> None:
    app = start_upstream()
    spinner = route(
        [{"url": app.postback_url, "retries": 0}],
        allow_ips=["10.9.9.9"],
        allow_ips_mode="log_only",
        aliases=None,
    )
    gw = launch(app.postback_url, extra_routes={"spinner": spinner})
    valued = click("dash-1", reward_event_type="valued", estimated_price="0.01")
    assert gw.postback(**valued).outcome == "forwarded"
    assert gw.postback(**valued).outcome == "duplicate"
    assert gw.postback(token="nope", **click("dash-2")).outcome == "rejected"
    assert gw.postback(**click("dash-3", zone_id="x")).outcome == "invalid"
    assert gw.postback("/nope", **click("dash-4")).outcome == "not_found"
    assert gw.postback("/postback/spinner", **click("dash-5")).outcome == "forwarded"

    dashboard = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    target_exprs = [
        target["expr"]
        for panel in _all_panels(dashboard)
        for target in panel.get("targets", [])
        if "expr" in target
    ]
    assert target_exprs, "the dashboard has no PromQL targets"
    used = {
        name
        for expr in [*target_exprs, *_dashboard_exprs(dashboard)]
        for name in re.findall(r"\bgateway_[a-z0-9_]+", expr)
    }
    assert used, "no gateway_ metric in the dashboard"

    scrape = gw.scrape()
    declared = set(re.findall(r"^# (?:HELP|TYPE) (gateway_[a-z0-9_]+)", scrape.text, re.M))
    missing = sorted(name for name in used if name not in scrape.sample_names | declared)
    assert not missing, f"dashboard metrics absent from /metrics: {missing}"
    # with the traffic above every family the dashboard reads has at least one sample
    without_samples = sorted(name for name in used if name not in scrape.sample_names)
    assert not without_samples, f"dashboard metrics with no samples: {without_samples}"


def _all_panels(node: dict[str, Any]) -> Iterator[dict[str, Any]]:
    for panel in node.get("panels", []):
        yield panel
        yield from _all_panels(panel)


# -- 7: drain ---------------------------------------------------------------------------------


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


def test_long_query_is_answered_414(launch: Launcher, start_upstream: UpstreamFactory) -> None:
    app = start_upstream()
    gw = launch(app.postback_url, server={"max_query_length": 100})

    long = gw.postback(**click("long-1", padding="p" * 200))
    assert (long.status, long.outcome) == (414, "invalid")
    short = gw.postback(**click("short-1"))
    assert (short.status, short.outcome) == (200, "forwarded")
    assert app.count() == 1


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
