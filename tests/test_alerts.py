"""The shipped alerting rules (deploy/prometheus/alerts.yml): valid for promtool, each alert
fired and kept quiet by its unit tests (tests/prometheus/alerts_test.yml), each with a
summary and a runbook section in docs/operations.md, and every metric and label they name
exported by a live gateway (a real process with TLS, a store, a queued route and Redis
dedup falling back), so a renamed metric cannot leave an alert that never fires. The same
gateway holds the metric table of docs/observability.md to what it exports: every family
in it has a row, and every row's labels are the ones its samples carry."""

from __future__ import annotations

import http.client
import json
import re
import shutil
import subprocess
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.conftest import UpstreamFactory
from tests.support.alertrules import RULES, alerts
from tests.support.gatewayconfig import gateway_config, route, upstream
from tests.support.metrics import Scrape
from tests.support.metrictable import documented_metrics, exported_families
from tests.support.processes import (
    SECRET,
    command_env,
    free_port,
    http_get,
    spawn_gateway,
)
from tests.support.sessionsconfig import SESSIONS_ENV, sessions_route
from tests.support.tlscerts import make_certificate
from tests.support.waiting import eventually

REPO = Path(__file__).resolve().parents[1]
UNIT_TESTS = REPO / "tests" / "prometheus" / "alerts_test.yml"
RUNBOOK = REPO / "docs" / "operations.md"
# labels Prometheus adds to every scraped series
FROM_PROMETHEUS = {"job", "instance"}
PROMQL_WORDS = {
    "sum", "max", "min", "avg", "count", "by", "without", "and", "or", "unless", "on",
    "ignoring", "group_left", "group_right", "offset", "bool", "rate", "increase", "irate",
    "time", "absent", "delta", "deriv", "histogram_quantile", "le",
}  # fmt: skip


def promtool() -> str:
    found = shutil.which("promtool")
    assert found, "promtool is missing: ./scripts/test installs it (Debian package prometheus)"
    return found


def run_promtool(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [promtool(), *args], cwd=REPO, capture_output=True, text=True, timeout=60, check=False
    )


def test_promtool_accepts_the_rules() -> None:
    result = run_promtool("check", "rules", str(RULES))
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(alerts())} rules found" in result.stdout


def test_promtool_unit_tests_pass() -> None:
    result = run_promtool("test", "rules", str(UNIT_TESTS))
    assert result.returncode == 0, result.stdout + result.stderr


def test_each_alert_has_a_firing_and_a_quiet_case() -> None:
    cases: dict[str, set[bool]] = {}
    for group in yaml.safe_load(UNIT_TESTS.read_text())["tests"]:
        for case in group["alert_rule_test"]:
            cases.setdefault(case["alertname"], set()).add(bool(case["exp_alerts"]))
    for rule in alerts():
        assert cases.get(rule["alert"]) == {True, False}, (
            f"{rule['alert']} needs a case where it fires and one where it stays quiet"
        )


def anchors(markdown: str) -> set[str]:
    """GitHub's anchors of a page's headings: lower case, punctuation dropped, spaces -> -."""
    found = set()
    for heading in re.findall(r"^#+ (.+)$", markdown, flags=re.MULTILINE):
        anchor = re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")
        found.add(anchor)
    return found


def test_each_alert_says_what_and_where_its_runbook_is() -> None:
    sections = anchors(RUNBOOK.read_text())
    for rule in alerts():
        name, annotations = rule["alert"], rule["annotations"]
        assert rule["labels"]["severity"] in ("critical", "warning"), name
        assert "for" in rule, f"{name}: say how long it waits, `for: 0m` if at once"
        assert annotations.get("summary") and annotations.get("description"), name
        page, _, anchor = annotations["runbook_url"].partition("#")
        assert page == "docs/operations.md" and anchor in sections, (name, anchor)
        if re.search(r"by \([^)]*route", rule["expr"]):
            assert "{{ $labels.route }}" in annotations["summary"], f"{name}: name the route"


@dataclass(frozen=True)
class NamesInExpr:
    """What a PromQL expression names: each metric with the labels its selector matches on,
    and the labels it groups or joins by (`by`, `without`, `on`, `ignoring`)."""

    selectors: dict[str, set[str]]
    grouping: set[str]


def names_in(expr: str) -> NamesInExpr:
    text = re.sub(r'"[^"]*"', '""', expr)  # label values are not names
    text = re.sub(r"\[[^\]]*\]", "", text)  # range durations
    selectors: dict[str, set[str]] = {}
    for metric, matchers in re.findall(r"\b([a-zA-Z_:][\w:]*)\s*\{([^}]*)\}", text):
        matched = re.findall(r"(\w+)\s*(?:=~|!~|!=|=)", matchers)
        selectors.setdefault(metric, set()).update(matched)
    grouping: set[str] = set()
    for clause in re.findall(r"\b(?:by|without|on|ignoring)\s*\(([^)]*)\)", text):
        grouping.update(name.strip() for name in clause.split(",") if name.strip())
    text = re.sub(r"\{[^}]*\}", "", text)
    text = re.sub(r"\b(?:by|without|on|ignoring)\s*\([^)]*\)", "", text)
    for word in set(re.findall(r"\b[a-zA-Z_:][\w:]*\b", text)) - PROMQL_WORDS:
        selectors.setdefault(word, set())
    return NamesInExpr(selectors, grouping)


def unknown_names(expr: str, live: dict[str, set[str]]) -> list[str]:
    """What `expr` names that `live` (sample name -> its label names) lacks: a metric, a label
    a selector matches on that its own metric does not carry, a grouping label none carries."""
    names = names_in(expr)
    problems = [f"no metric {metric}" for metric in names.selectors.keys() - live.keys()]
    for metric, labels in names.selectors.items():
        missing = labels - live.get(metric, set()) - FROM_PROMETHEUS
        problems += [f"no label {label} on {metric}" for label in sorted(missing)]
    carried = set().union(*(live.get(metric, set()) for metric in names.selectors))
    missing = names.grouping - carried - FROM_PROMETHEUS
    problems += [f"no label {label} to group by" for label in sorted(missing)]
    return problems


def test_the_name_reader_sees_every_metric_and_label() -> None:
    """The check below is only as good as this reader: it must see every metric and label."""
    names = names_in(
        'sum by (route) (increase(gateway_valued_postbak_total{mode="x"}[1h] offset 1h)) > 0'
        ' unless on (instance) up{job="monetag-gateway",status_class!~"2xx|4xx"} == 0'
        " and gateway_ready < 14 * 86400"
    )
    assert names.selectors == {
        "gateway_valued_postbak_total": {"mode"},
        "up": {"job", "status_class"},
        "gateway_ready": set(),
    }
    assert names.grouping == {"route", "instance"}


LIVE_EXAMPLE = {
    "gateway_valued_postbacks_total": {"route"},
    "gateway_rejections_total": {"route", "reason"},
    "up": set(),
}


@pytest.mark.parametrize(
    ("expr", "problem"),
    [
        (
            "increase(gateway_valued_postbak_total[1h]) > 0",
            "no metric gateway_valued_postbak_total",
        ),
        (
            'gateway_valued_postbacks_total{reason="secret_wrong"} / gateway_rejections_total',
            "no label reason on gateway_valued_postbacks_total",
        ),
        ("sum by (zone) (gateway_valued_postbacks_total)", "no label zone to group by"),
    ],
    ids=["misspelt metric", "label of another metric", "grouping label nobody carries"],
)
def test_the_check_catches_a_name_the_gateway_does_not_export(expr: str, problem: str) -> None:
    assert unknown_names(expr, LIVE_EXAMPLE) == [problem]


def test_the_check_lets_prometheus_own_names_through() -> None:
    expr = 'up{job="monetag-gateway"} == 0 or sum by (instance) (gateway_rejections_total)'
    assert unknown_names(expr, LIVE_EXAMPLE) == []


def https_get(port: int, target: str, context: Any, source: str = "127.0.0.1") -> int:
    connection = http.client.HTTPSConnection(
        "127.0.0.1", port, context=context, timeout=10, source_address=(source, 0)
    )
    try:
        connection.request("GET", target)
        response = connection.getresponse()
        response.read()
        return response.status
    finally:
        connection.close()


@pytest.mark.process
def test_every_metric_the_rules_and_the_docs_name_is_on_a_live_gateway(
    start_upstream: UpstreamFactory, tmp_path: Path
) -> None:
    app = start_upstream()
    certificate = make_certificate(tmp_path, "gateway")
    public, admin = free_port(), free_port()
    closed_redis = f"redis://127.0.0.1:{free_port()}/0"  # nothing listens: every call fails
    app_route = upstream(app.url, retries=0)
    text = gateway_config(
        routes={
            # one entry of dedup memory: the second event evicts the first
            "tapper": route([app_route], allow_ips=["127.0.0.1"], dedup={"max_entries": 1}),
            "runner": route([app_route], delivery="queued"),
            "shared": route(
                [app_route],
                dedup={
                    "backend": "redis",
                    "redis_url": closed_redis,
                    "on_redis_error": "fail_open",
                },
            ),
            "miniapp": sessions_route(app.url),
        },
        server={
            "listen": f"127.0.0.1:{public}",
            "admin_listen": f"127.0.0.1:{admin}",
            "tls": {"cert_file": str(certificate.cert_file), "key_file": str(certificate.key_file)},
        },
        store=tmp_path / "gw.db",
    )
    config = tmp_path / "config.yaml"
    config.write_text(text)
    env = command_env(SECRET, **SESSIONS_ENV)
    process = spawn_gateway(config, env, tmp_path / "out", tmp_path / "err")
    try:
        eventually(
            lambda: _ready(admin, process), 30, explain=lambda: (tmp_path / "err").read_text()
        )
        context = certificate.client_context()

        def postback(path: str, source: str = "127.0.0.1", **params: str) -> int:
            query = {"uid": "y", "event": "click", "zone": "1", "token": SECRET, **params}
            return https_get(public, f"{path}?{urllib.parse.urlencode(query)}", context, source)

        valued = {"reward_event_type": "valued", "estimated_price": "0.01"}
        assert postback("/postback/tapper", uid="y-1", **valued) == 200
        assert postback("/postback/tapper", uid="y-2", **valued) == 200  # evicts y-1
        assert postback("/postback/tapper", token="not-the-key") == 403
        assert postback("/postback/tapper", source="127.0.0.5") == 403  # valid key, unlisted
        assert postback("/postback/runner", uid="y-3") == 200
        assert postback("/postback/shared", uid="y-4") == 200  # Redis down: local memory
        assert postback("/postback/miniapp", uid="not-issued-here") == 403

        def scraped() -> dict[str, set[str]]:
            return Scrape.parse(http_get(admin, "/metrics").body.decode()).label_names

        # the queued delivery happens in the background, the queue's gauges every few seconds
        queue_metrics = {"gateway_deliveries_total", "gateway_queue_oldest_pending_age_seconds"}
        eventually(lambda: queue_metrics <= set(scraped()), 20)
        exposition = http_get(admin, "/metrics").body.decode()
        live = Scrape.parse(exposition).label_names
    finally:
        process.terminate()
        process.wait(timeout=10)

    assert_the_metric_table_matches(exposition, live)
    live["up"] = set()  # Prometheus's own, per target
    problems = {rule["alert"]: unknown_names(rule["expr"], live) for rule in alerts()}
    assert not {alert: found for alert, found in problems.items() if found}


def assert_the_metric_table_matches(exposition: str, live: dict[str, set[str]]) -> None:
    table = documented_metrics()
    exported = exported_families(exposition)
    assert sorted(exported - table.keys()) == [], "exported, but no row in observability.md"
    assert sorted(table.keys() - exported) == [], "a row in observability.md nobody exports"
    for name, labels in table.items():
        carried = set().union(*(live.get(name + suffix, set()) for suffix in SAMPLE_SUFFIXES))
        if carried:  # a family with no series yet says nothing of its labels
            assert carried - {"le"} == labels, f"{name}: the table says {sorted(labels)}"


SAMPLE_SUFFIXES = ("", "_bucket", "_count", "_sum")


def test_the_metric_table_reader_reads_names_and_labels_not_their_examples() -> None:
    table = documented_metrics()
    assert table["gateway_rejections_total"] == {"route", "reason"}
    assert table["gateway_upstream_attempts_total"] == {"route", "upstream", "status_class"}
    assert table["gateway_store_commits_total"] == table["gateway_store_failures_total"] == set()
    assert table["gateway_connections_refused_total"] == {"port", "reason"}


def _ready(admin: int, process: subprocess.Popen[bytes]) -> bool:
    assert process.poll() is None, "the gateway exited"
    try:
        return http_get(admin, "/readyz", timeout=1).status == 200
    except OSError:
        return False


def test_the_compose_prometheus_config_is_valid_and_loads_these_rules() -> None:
    """deploy/prometheus/prometheus.yml as Prometheus reads it: promtool checks it and the
    rule files it names (compose mounts the directory, so alerts.yml is found beside it)."""
    result = run_promtool("check", "config", str(RULES.parent / "prometheus.yml"))
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(alerts())} rules found" in result.stdout


# -- Alertmanager: where the alerts go ------------------------------------------------------

ALERTMANAGER_CONFIG = RULES.parent / "alertmanager.yml"


def alertmanager_binary() -> str:
    found = shutil.which("prometheus-alertmanager") or shutil.which("alertmanager")
    assert found, "Alertmanager is missing: ./scripts/test installs prometheus-alertmanager"
    return found


def test_amtool_accepts_the_alertmanager_config_and_routes_critical_alerts_sooner() -> None:
    amtool = shutil.which("amtool")
    assert amtool, "amtool is missing: ./scripts/test installs prometheus-alertmanager"
    checked = subprocess.run(
        [amtool, "check-config", str(ALERTMANAGER_CONFIG)], capture_output=True, text=True
    )
    assert checked.returncode == 0, checked.stdout + checked.stderr
    config = yaml.safe_load(ALERTMANAGER_CONFIG.read_text())
    assert set(config["route"]["group_by"]) == {"alertname", "route", "instance"}
    (critical,) = config["route"]["routes"]
    assert critical["matchers"] == ['severity="critical"'] and critical["repeat_interval"] == "1h"
    inhibited = {
        name
        for rule in config["inhibit_rules"]
        for matcher in rule["target_matchers"]
        for name in re.findall(r"Gateway\w+", matcher)
    }
    assert inhibited <= {rule["alert"] for rule in alerts()}  # names of real alerts


def post_alerts(port: int, alerts_sent: list[dict[str, Any]]) -> None:
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}/api/v2/alerts",
        data=json.dumps(alerts_sent).encode(),
        headers={"Content-Type": "application/json"},
        method="POST",
    )
    with urllib.request.urlopen(request, timeout=5) as response:
        assert response.status == 200


def alert_states(port: int) -> dict[tuple[str, str], str]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/v2/alerts", timeout=5) as answer:
        found = json.load(answer)
    return {
        (alert["labels"]["alertname"], alert["labels"]["instance"]): alert["status"]["state"]
        for alert in found
    }


@pytest.mark.process
def test_alertmanager_holds_back_what_follows_from_a_store_down_on_the_same_replica(
    tmp_path: Path,
) -> None:
    """The shipped config run by the real daemon: GatewayNotReady on the replica whose store
    is down is inhibited (one cause, one message); on another replica it is not."""
    port, cluster = free_port(), free_port()
    daemon = subprocess.Popen(
        [
            alertmanager_binary(),
            f"--config.file={ALERTMANAGER_CONFIG}",
            f"--storage.path={tmp_path}",
            f"--web.listen-address=127.0.0.1:{port}",
            f"--cluster.listen-address=127.0.0.1:{cluster}",
        ],
        stdout=subprocess.DEVNULL,
        stderr=(tmp_path / "err").open("wb"),
    )
    try:
        eventually(lambda: _answers(port), 20, explain=lambda: (tmp_path / "err").read_text())

        def alert(name: str, instance: str, severity: str) -> dict[str, Any]:
            labels = {"alertname": name, "instance": instance, "severity": severity}
            return {"labels": {**labels, "job": "monetag-gateway"}}

        post_alerts(
            port,
            [
                alert("GatewayStoreDown", "gw-1:9090", "critical"),
                alert("GatewayNotReady", "gw-1:9090", "critical"),
                alert("GatewayNotReady", "gw-2:9090", "critical"),
            ],
        )
        expected = {
            ("GatewayStoreDown", "gw-1:9090"): "active",
            ("GatewayNotReady", "gw-1:9090"): "suppressed",
            ("GatewayNotReady", "gw-2:9090"): "active",
        }
        eventually(lambda: alert_states(port) == expected, 10, explain=lambda: alert_states(port))
    finally:
        daemon.terminate()
        daemon.wait(timeout=10)


def _answers(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/-/ready", timeout=1) as answer:
            return answer.status == 200
    except OSError:
        return False
