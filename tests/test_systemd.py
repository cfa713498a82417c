"""deploy/systemd/monetag-gateway.service: systemd's own checker finds nothing in it, and what
it says agrees with the shipped config (the store's directory, the shutdown grace, the config
path the image uses too)."""

from __future__ import annotations

import configparser
import re
import shutil
import subprocess
from pathlib import Path

import yaml

from gateway.config import parse_config
from tests.support.processes import REPO, SECRET

UNIT = REPO / "deploy" / "systemd" / "monetag-gateway.service"
INSTALLED = "/opt/monetag-gateway/bin/monetag-gateway"


def verify(text: str, tmp_path: Path) -> str:
    """What `systemd-analyze verify` says of the unit (it exits 0 even on unknown keys and bad
    values, and prints them): its ExecStart pointed at this checkout's command, which exists."""
    analyze = shutil.which("systemd-analyze")
    assert analyze, "systemd-analyze is missing: ./scripts/test installs systemd"
    local = shutil.which("monetag-gateway", path=str(REPO / ".venv" / "bin"))
    assert local, "no .venv/bin/monetag-gateway: ./scripts/test installs it"
    unit = tmp_path / "monetag-gateway.service"
    unit.write_text(text.replace(INSTALLED, local), encoding="utf-8")
    result = subprocess.run(
        [analyze, "verify", str(unit)], capture_output=True, text=True, timeout=60
    )
    return (result.stdout + result.stderr).strip()


def test_systemd_analyze_finds_nothing_to_say(tmp_path: Path) -> None:
    assert verify(UNIT.read_text(encoding="utf-8"), tmp_path) == ""


def test_systemd_analyze_would_say_so_of_a_mistake(tmp_path: Path) -> None:
    broken = UNIT.read_text(encoding="utf-8").replace("ProtectSystem=strict", "ProtectSystem=al")
    assert "protect system value" in verify(broken, tmp_path)


def service() -> configparser.SectionProxy:
    parser = configparser.ConfigParser(strict=False, interpolation=None)
    parser.optionxform = str  # type: ignore[assignment,method-assign]
    parser.read_string(UNIT.read_text(encoding="utf-8"))
    return parser["Service"]


def test_it_runs_unprivileged_on_a_read_only_system_but_the_stores_directory() -> None:
    unit = service()
    assert unit["User"] == "monetag-gateway" and unit["NoNewPrivileges"] == "yes"
    assert unit["CapabilityBoundingSet"] == "" and unit["ProtectSystem"] == "strict"
    assert unit["ProtectHome"] == "yes" and unit["PrivateTmp"] == "yes"
    # the shipped config keeps its store at GATEWAY_STORE: the unit's StateDirectory
    shipped = (REPO / "config.yaml").read_text(encoding="utf-8")
    store = unit["Environment"].removeprefix("GATEWAY_STORE=")
    config = parse_config(shipped, {"MONETAG_SECRET": SECRET, "GATEWAY_STORE": store})
    assert config.store is not None and config.store.path is not None
    assert Path(config.store.path).parent == Path("/var/lib") / unit["StateDirectory"]


def test_reload_stop_and_the_config_path_agree_with_the_gateway() -> None:
    unit = service()
    assert unit["ExecReload"] == "/bin/kill -HUP $MAINPID"  # the gateway reloads on SIGHUP
    assert unit["KillSignal"] == "SIGTERM"
    shipped = yaml.safe_load((REPO / "config.yaml").read_text(encoding="utf-8"))["server"]
    grace = float(shipped.get("shutdown_grace", 30)) + float(shipped.get("drain_delay", 0))
    assert float(unit["TimeoutStopSec"]) > grace  # systemd kills only after the gateway's grace
    image_config = re.search(r"GATEWAY_CONFIG=(\S+)", (REPO / "Dockerfile").read_text())
    assert image_config is not None
    assert unit["ExecStart"] == f"{INSTALLED} run --config {image_config.group(1)}"
    assert unit["EnvironmentFile"] == str(Path(image_config.group(1)).parent / "env")
