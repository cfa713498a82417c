"""No Docker daemon runs here: check that the compose set-up is consistent with itself.

docker-compose.yml runs nginx, two identical gateway replicas sharing a PostgreSQL store, and
the demo app; deploy/gateway.yaml is the replicas' config and deploy/nginx.conf nginx's.
"""

from __future__ import annotations

import ipaddress
import re
import shlex
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
import yaml

from gateway.config import GatewayConfig, load_config
from tests.support.alertrules import job_matchers
from tests.support.processes import REPO, command_env, free_port

COMPOSE_FILE = REPO / "docker-compose.yml"
GATEWAY_YAML = REPO / "deploy/gateway.yaml"
GATEWAYS = ("gateway-1", "gateway-2")
PASSWORD = "pg-pass-Zq81xw"  # POSTGRES_PASSWORD: must never appear in `check`'s output
SECRET = "compose-secret-123"
ADMIN_TOKEN = "compose-admin-token-0123"  # 16 characters or more
_COMPOSE_VARIABLE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::([?-])([^}]*))?\}")


def compose() -> dict[str, Any]:
    document: dict[str, Any] = yaml.safe_load(COMPOSE_FILE.read_text())
    return document


def interpolate(text: str, environ: Mapping[str, str]) -> str:
    """What `docker compose` makes of ${NAME}, ${NAME:?message} and ${NAME:-default}."""

    def value_of(match: re.Match[str]) -> str:
        name, kind, rest = match.groups()
        if environ.get(name):
            return environ[name]
        assert kind == "-", f"compose would refuse to start without {name}"
        return rest

    return _COMPOSE_VARIABLE.sub(value_of, text)


def compose_env() -> dict[str, str]:
    """The gateway containers' environment, as compose sets it from the shell's."""
    shell = {"MONETAG_SECRET": SECRET, "POSTGRES_PASSWORD": PASSWORD, "ADMIN_TOKEN": ADMIN_TOKEN}
    environment = compose()["services"]["gateway-1"]["environment"]
    return {name: interpolate(value, shell) for name, value in environment.items()}


def gateway_config(**overrides: str) -> GatewayConfig:
    return load_config(GATEWAY_YAML, {**compose_env(), **overrides})


def container_config_path() -> str:
    """Where the image reads its config (the Dockerfile's GATEWAY_CONFIG)."""
    found = re.search(r"GATEWAY_CONFIG=(\S+)", (REPO / "Dockerfile").read_text())
    assert found is not None
    return found.group(1)


def walkthrough() -> list[str]:
    """The commands of the header comment, without their own comments."""
    commands = []
    for line in COMPOSE_FILE.read_text().splitlines():
        if not line.startswith("#"):
            break
        command = line.lstrip("# ").split("   #", 1)[0].strip()
        if command.startswith(("docker ", "curl ", "export ")):
            commands.append(command)
    return commands


def test_compose_runs_two_replicas_postgres_and_the_app_behind_one_port() -> None:
    services = compose()["services"]
    assert set(services) == {
        *("lb", "gateway-1", "gateway-2", "postgres", "app"),
        *("prometheus", "alertmanager"),
    }
    for monitoring in ("prometheus", "alertmanager"):  # a plain `up` runs the rest
        assert services[monitoring]["profiles"] == ["monitoring"]
    assert services["gateway-1"] == services["gateway-2"]
    assert services["lb"]["ports"] == ["8080:80"]
    assert set(services["lb"]["depends_on"]) == set(GATEWAYS)
    # Redis stays a documented option, not part of this set-up (comments aside)
    assert "redis" not in repr(compose()).lower()
    assert "redis" not in repr(yaml.safe_load(GATEWAY_YAML.read_text())).lower()


def test_nginx_sends_to_both_replicas_by_their_alias_on_their_public_port() -> None:
    nginx = (REPO / "deploy/nginx.conf").read_text()
    services = compose()["services"]
    for name in GATEWAYS:
        assert services[name]["networks"]["gateway-net"]["aliases"] == ["gateways"]
    port = gateway_config().server.listen.port
    assert "set $gateways gateways;" in nginx
    assert f"proxy_pass http://$gateways:{port};" in nginx  # a variable: looked up again
    assert re.search(r"^resolver @RESOLVER@ valid=\d+s", nginx, re.MULTILINE)
    # a replica that is down: the other one, once (tests/test_nginx.py runs it for real)
    assert "proxy_next_upstream error timeout;" in nginx


@pytest.mark.process
def test_nginx_start_script_fills_in_the_networks_dns_server(tmp_path: Path) -> None:
    script = (REPO / "deploy/nginx-start.sh").read_text()
    lb = compose()["services"]["lb"]
    mounts = dict(volume.rsplit(":", 1)[0].split(":", 1) for volume in lb["volumes"])
    assert mounts == {
        "./deploy/nginx.conf": "/etc/nginx/gateway.conf.in",
        "./deploy/nginx-start.sh": "/etc/nginx/nginx-start.sh",
    }
    assert lb["command"] == ["sh", "/etc/nginx/nginx-start.sh"]
    # run it here, with its paths pointed into tmp_path and nginx replaced by `cat`
    for nameserver, resolver in (("127.0.0.11", "127.0.0.11"), ("fd00::1", "[fd00::1]")):
        (tmp_path / "resolv.conf").write_text(f"search dns.podman\nnameserver {nameserver}\n")
        local = (
            script.replace("/etc/resolv.conf", str(tmp_path / "resolv.conf"))
            .replace("/etc/nginx/gateway.conf.in", str(REPO / "deploy/nginx.conf"))
            .replace("/etc/nginx/conf.d/default.conf", str(tmp_path / "default.conf"))
            .replace("exec nginx -g 'daemon off;'", "exit 0")
        )
        subprocess.run(["sh", "-c", local], check=True, timeout=10)
        written = (tmp_path / "default.conf").read_text()
        assert f"resolver {resolver} valid=" in written and "@RESOLVER@" not in written


def test_the_lbs_fixed_address_is_outside_the_automatic_range() -> None:
    document = compose()
    (ipam,) = document["networks"]["gateway-net"]["ipam"]["config"]
    automatic = ipaddress.ip_network(ipam["ip_range"])
    lb_address = ipaddress.ip_address(
        document["services"]["lb"]["networks"]["gateway-net"]["ipv4_address"]
    )
    assert automatic.subnet_of(ipaddress.ip_network(ipam["subnet"]))  # type: ignore[arg-type]
    assert lb_address not in automatic  # a second `up` cannot hand it to another container


def test_the_app_has_a_healthcheck_of_its_own() -> None:
    app = compose()["services"]["app"]
    check = " ".join(app["healthcheck"]["test"])
    assert "health" not in check and "127.0.0.1:3000" in check  # not the gateway's


def test_nginx_logs_no_query_string() -> None:
    nginx = (REPO / "deploy/nginx.conf").read_text()
    formats = re.findall(r"log_format (\S+) (.*?);", nginx, re.DOTALL)
    assert [name for name, _ in formats] == ["gateway_access"]
    assert not re.search(r"\$(request|request_uri|args|query_string|arg_\w+)\b", formats[0][1])
    assert "access_log /var/log/nginx/access.log gateway_access;" in nginx


def test_gateways_trust_the_lb_and_reach_the_app() -> None:
    document = compose()
    services = document["services"]
    lb_address = services["lb"]["networks"]["gateway-net"]["ipv4_address"]
    subnet = document["networks"]["gateway-net"]["ipam"]["config"][0]["subnet"]
    assert ipaddress.ip_address(lb_address) in ipaddress.ip_network(subnet)
    raw = yaml.safe_load(GATEWAY_YAML.read_text())
    assert raw["server"]["trusted_proxies"] == [lb_address]
    config = gateway_config()
    assert config.server.admin_listen.host == "0.0.0.0"
    app_port = services["app"]["command"][-1]
    [route] = config.routes
    assert [str(upstream.url) for upstream in route.upstreams] == [
        f"http://app:{app_port}/postback"
    ]
    gateway = services["gateway-1"]
    assert gateway["volumes"] == [f"./deploy/gateway.yaml:{container_config_path()}:ro"]
    assert gateway["depends_on"]["app"] == {"condition": "service_started"}


def test_postgres_is_healthy_before_the_gateways_start_and_keeps_its_data() -> None:
    document = compose()
    postgres = document["services"]["postgres"]
    assert postgres["image"] == "postgres:16-alpine"
    [volume] = postgres["volumes"]
    name, mount = volume.split(":")
    assert name in document["volumes"] and mount == "/var/lib/postgresql/data"
    assert "pg_isready" in postgres["healthcheck"]["test"]
    gateway = document["services"]["gateway-1"]
    assert gateway["depends_on"]["postgres"] == {"condition": "service_healthy"}


def test_store_url_names_the_postgres_service_its_user_and_database() -> None:
    services = compose()["services"]
    postgres_env = services["postgres"]["environment"]
    assert postgres_env["POSTGRES_PASSWORD"].startswith("${POSTGRES_PASSWORD:?")
    gateway_env = services["gateway-1"]["environment"]
    assert gateway_env["MONETAG_SECRET"].startswith("${MONETAG_SECRET:?")
    store_url = urlsplit(compose_env()["STORE_URL"])
    assert store_url.scheme == "postgresql"
    assert (store_url.hostname, store_url.port) == ("postgres", 5432)
    assert store_url.username == postgres_env["POSTGRES_USER"]
    assert store_url.password == PASSWORD
    assert store_url.path == f"/{postgres_env['POSTGRES_DB']}"
    config = gateway_config()
    assert config.store is not None and config.store.url == compose_env()["STORE_URL"]


def test_replicas_stop_after_draining_and_queue_with_a_short_retry_cap() -> None:
    config = gateway_config()
    grace = compose()["services"]["gateway-1"]["stop_grace_period"]
    assert grace.endswith("s")
    assert int(grace[:-1]) > config.server.drain_delay + config.server.shutdown_grace
    assert config.server.drain_delay > 0
    [route] = config.routes
    assert route.delivery == "queued"
    assert route.dedup.backend == "memory" and route.dedup.redis_url is None
    assert route.queue.retry_cap <= 60  # the walkthrough says "within ~30s"


@pytest.mark.process
def test_compose_gateway_config_passes_check() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "gateway", "check", "--config", "deploy/gateway.yaml"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=30,
        env=command_env(SECRET, STORE_URL=compose_env()["STORE_URL"], ADMIN_TOKEN=ADMIN_TOKEN),
    )
    assert result.returncode == 0, result.stderr
    assert (
        "  store PostgreSQL postgresql://***@postgres:5432/gateway, shared by every replica"
        in result.stdout
    )
    assert "dedup     key [ymid, event_type, zone_id]" in result.stdout
    assert "this process, then PostgreSQL (every replica)" in result.stdout
    assert "Redis" not in result.stdout
    assert PASSWORD not in result.stdout + result.stderr
    assert SECRET not in result.stdout + result.stderr


def test_walkthrough_postback_matches_the_route_and_the_lb_port() -> None:
    commands = walkthrough()
    [export] = [command for command in commands if command.startswith("export ")]
    shell = dict(word.split("=", 1) for word in shlex.split(export)[1:])
    assert set(shell) == {"MONETAG_SECRET", "POSTGRES_PASSWORD", "ADMIN_TOKEN"}
    [curl] = [command for command in commands if command.startswith("curl ")]
    url = urlsplit(shlex.split(curl)[-1])
    assert url.port == int(compose()["services"]["lb"]["ports"][0].split(":")[0])
    [route] = gateway_config().routes
    assert url.path == route.path
    query = parse_qs(url.query)
    secret_param = route.secret.query_param if route.secret else None
    assert secret_param is not None
    assert query.pop(secret_param) == [shell["MONETAG_SECRET"]]
    assert {route.aliases[name] for name in query} == set(route.dedup.key)
    for step in (
        "docker compose stop app",
        "docker compose kill gateway-1",
        "docker compose start app",
        "docker compose logs app",
    ):
        assert step in commands


@pytest.mark.process
def test_walkthrough_exec_commands_are_ones_the_cli_accepts(tmp_path: Path) -> None:
    """Run as written (`queue stats`, `history trace`), against a PostgreSQL that is not
    there: the CLI parses each and gets as far as opening the store (an argument in the wrong
    place would stop it earlier)."""
    exec_commands = [command for command in walkthrough() if " exec " in command]
    assert [shlex.split(command)[7] for command in exec_commands] == ["queue", "history"]
    for exec_command in exec_commands:
        words = shlex.split(exec_command)
        assert words[:4] == ["docker", "compose", "exec", "gateway-2"]
        assert words[4:7] == ["python", "-m", "gateway"]
        arguments = words[7:]
        assert arguments[arguments.index("--config") + 1] == container_config_path()
        arguments[arguments.index("--config") + 1] = str(GATEWAY_YAML)
        nowhere = f"postgresql://gateway:{PASSWORD}@127.0.0.1:{free_port()}/gateway"
        result = subprocess.run(
            [sys.executable, "-m", "gateway", *arguments],
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=60,
            env=command_env(SECRET, STORE_URL=nowhere, ADMIN_TOKEN=ADMIN_TOKEN),
        )
        assert "cannot open the store" in result.stdout + result.stderr, result.stderr
        assert PASSWORD not in result.stdout + result.stderr


def test_prometheus_scrapes_both_replicas_admin_ports_and_loads_the_shipped_rules() -> None:
    """The job the alerts name, every replica's /metrics on the port the config serves it on
    (under a name admin_hosts admits), and the rules file mounted where the config reads it."""
    service = compose()["services"]["prometheus"]
    mount = "./deploy/prometheus:/etc/prometheus:ro"
    assert mount in service["volumes"]
    assert "--config.file=/etc/prometheus/prometheus.yml" in service["command"]
    # a command replaces the image's own arguments, so its data path too: said explicitly, as
    # a build's default may be a directory the image does not have (seen on a Debian build)
    assert "--storage.tsdb.path=/prometheus" in service["command"]
    assert all(port.startswith("127.0.0.1:") for port in service["ports"])  # no sign-in
    scrape = yaml.safe_load((REPO / "deploy/prometheus/prometheus.yml").read_text())
    assert scrape["rule_files"] == ["alerts.yml"]
    assert (REPO / "deploy/prometheus/alerts.yml").is_file()
    (job,) = scrape["scrape_configs"]
    # every selector of the rules names this job: one other name and that alert never fires
    assert job_matchers() == {("=", job["job_name"])}
    config = gateway_config()
    targets = job["static_configs"][0]["targets"]
    assert targets == [f"{name}:{config.server.admin_listen.port}" for name in GATEWAYS]
    assert set(GATEWAYS) <= set(config.server.admin_hosts)
    assert not config.server.metrics_need_token and job["metrics_path"] == "/metrics"


def test_prometheus_sends_its_alerts_to_the_compose_alertmanager() -> None:
    services = compose()["services"]
    alertmanager = services["alertmanager"]
    assert "alertmanager" in services["prometheus"]["depends_on"]
    mount = "./deploy/prometheus/alertmanager.yml:/etc/alertmanager/alertmanager.yml:ro"
    assert mount in alertmanager["volumes"]
    assert "--config.file=/etc/alertmanager/alertmanager.yml" in alertmanager["command"]
    assert all(port.startswith("127.0.0.1:") for port in alertmanager["ports"])
    scrape = yaml.safe_load((REPO / "deploy/prometheus/prometheus.yml").read_text())
    (target,) = scrape["alerting"]["alertmanagers"][0]["static_configs"][0]["targets"]
    assert target == "alertmanager:9093"
