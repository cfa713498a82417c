"""No Docker daemon runs here: check that the compose set-up is consistent with itself."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import yaml

from tests.processes import REPO, command_env


def test_compose_runs_two_replicas_redis_and_the_app_behind_one_port() -> None:
    compose = yaml.safe_load((REPO / "docker-compose.yml").read_text())
    services = compose["services"]
    assert set(services) == {"lb", "gateway-1", "gateway-2", "redis", "app"}
    assert services["gateway-1"] == services["gateway-2"]
    assert services["lb"]["ports"] == ["8080:80"]
    nginx = (REPO / "deploy/nginx.conf").read_text()
    assert "server gateway-1:8080;" in nginx and "server gateway-2:8080;" in nginx
    lb_address = services["lb"]["networks"]["gateway-net"]["ipv4_address"]
    gateway_config = yaml.safe_load((REPO / "deploy/gateway.yaml").read_text())
    assert gateway_config["server"]["trusted_proxies"] == [lb_address]
    app_command = services["app"]["command"]
    assert f"http://app:{app_command[-1]}/postback" in (REPO / "deploy/gateway.yaml").read_text()


def test_compose_gateway_config_passes_check(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "gateway", "check", "--config", "deploy/gateway.yaml"],
        cwd=REPO, capture_output=True, text=True, timeout=30,
        env=command_env("compose-secret-123", REDIS_URL="redis://:redis-pass-777@redis:6379/0"),
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "dedup     key [ymid, event_type, zone_id]" in result.stdout
    assert "shared on redis://redis:6379/0 (fail_closed)" in result.stdout
    assert "redis-pass-777" not in result.stdout + result.stderr
