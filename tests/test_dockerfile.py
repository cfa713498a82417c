"""No Docker daemon runs here, so the Dockerfile's own commands are run in a fresh virtualenv."""

from __future__ import annotations

import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.support.configedit import edited
from tests.support.processes import REPO, free_port
from tests.support.waiting import eventually


def instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) of the Dockerfile, continuation lines joined."""
    text = (REPO / "Dockerfile").read_text().replace("\\\n", " ")
    result = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            keyword, _, rest = line.partition(" ")
            result.append((keyword.upper(), rest.strip()))
    return result


def test_the_image_runs_as_its_own_user_after_every_install_step() -> None:
    steps = instructions()
    keywords = [keyword for keyword, _ in steps]
    assert ("USER", "gateway") in steps
    assert keywords.index("USER") > max(i for i, k in enumerate(keywords) if k == "RUN")


def test_the_image_exposes_the_ports_the_shipped_config_listens_on() -> None:
    shipped = yaml.safe_load((REPO / "config.yaml").read_text())["server"]
    listening = {shipped[key].rpartition(":")[2] for key in ("listen", "admin_listen")}
    exposed = {
        port for keyword, rest in instructions() if keyword == "EXPOSE" for port in rest.split()
    }
    assert exposed == listening


@pytest.fixture(scope="module")
def image_venv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh virtualenv with the package installed by the Dockerfile's own RUN pip line."""
    context = tmp_path_factory.mktemp("context")
    for keyword, rest in instructions():
        if keyword == "COPY" and not rest.startswith("--"):
            *sources, _ = rest.split()
            for source in sources:
                target = context / source
                if (REPO / source).is_dir():
                    shutil.copytree(
                        REPO / source, target, ignore=shutil.ignore_patterns("__pycache__")
                    )
                else:
                    shutil.copy(REPO / source, target)
    venv = tmp_path_factory.mktemp("venv")
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    pip_runs = [rest for keyword, rest in instructions() if keyword == "RUN" and "pip " in rest]
    assert len(pip_runs) == 1
    command = shlex.split(pip_runs[0])
    assert command[0] == "pip"
    subprocess.run([str(venv / "bin" / "pip"), *command[1:]], cwd=context, check=True, timeout=600)
    return venv


def exec_form(arguments: str) -> list[str]:
    command = json.loads(arguments)
    assert isinstance(command, list), "use the exec form so signals reach the gateway"
    return command


@pytest.mark.process
def test_image_commands_run_and_report_healthy(image_venv: Path, tmp_path: Path):
    steps = dict(instructions())
    cmd = exec_form(steps["CMD"])
    health = exec_form(steps["HEALTHCHECK"].split(" CMD ", 1)[1])
    public, admin = free_port(), free_port()
    shipped = yaml.safe_load((REPO / "config.yaml").read_text())
    ports = {"server.listen": f"127.0.0.1:{public}", "server.admin_listen": f"127.0.0.1:{admin}"}
    (tmp_path / "config.yaml").write_text(edited(shipped, ports))
    env = {
        "PATH": f"{image_venv / 'bin'}:/usr/bin:/bin",
        "GATEWAY_CONFIG": str(tmp_path / "config.yaml"),
        "MONETAG_SECRET": "container-secret-1234",
    }
    gateway = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)

    def healthcheck_passes() -> bool:
        return subprocess.run(health, env=env, capture_output=True, timeout=10).returncode == 0

    try:
        eventually(healthcheck_passes, 20, interval=0.2)
    finally:
        gateway.send_signal(signal.SIGTERM)
        output, _ = gateway.communicate(timeout=20)
    assert gateway.returncode == 0, output.decode()
    assert b'"message": "listening"' in output
    assert subprocess.run(health, env=env, capture_output=True, timeout=10).returncode != 0
    assert os.path.exists(image_venv / "bin" / "monetag-gateway")
