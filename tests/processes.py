"""Running the real `python -m gateway` as a subprocess on free loopback ports."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def command_env(secret: str, **extra: str) -> dict[str, str]:
    """This process's environment without the gateway's own variables, plus the route secret."""
    env = {
        name: value
        for name, value in os.environ.items()
        if name not in ("GATEWAY_CONFIG", "GATEWAY_LOG_LEVEL", "MONETAG_SECRET")
    }
    return {**env, "MONETAG_SECRET": secret, **extra}


def spawn_gateway(
    config: Path, env: dict[str, str], stdout: Path, stderr: Path
) -> subprocess.Popen[bytes]:
    """`run --config CONFIG`, its output going to the two files."""
    with stdout.open("wb") as out, stderr.open("wb") as err:
        return subprocess.Popen(
            [sys.executable, "-m", "gateway", "run", "--config", str(config)],
            cwd=REPO,
            env=env,
            stdout=out,
            stderr=err,
        )
