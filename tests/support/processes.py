"""Running the real `python -m gateway` as a subprocess on free loopback ports."""

from __future__ import annotations

import http.client
import json
import os
import signal
import socket
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

# the checkout: the nearest folder above that holds pyproject.toml
REPO = next(up for up in Path(__file__).resolve().parents if (up / "pyproject.toml").is_file())


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


SECRET = "s3cret-key-0123456789"  # the route key the tests' configs read from MONETAG_SECRET


def command_env(secret: str = SECRET, **extra: str) -> dict[str, str]:
    """This process's environment without the gateway's own variables, plus the route secret."""
    env = {
        name: value
        for name, value in os.environ.items()
        if name
        not in ("GATEWAY_CONFIG", "GATEWAY_EVENT_LOOP", "GATEWAY_LOG_LEVEL", "MONETAG_SECRET")
    }
    return {**env, "MONETAG_SECRET": secret, **extra}


def gateway_command(
    *args: str, env: dict[str, str], timeout: float = 30.0
) -> subprocess.CompletedProcess[str]:
    """`python -m gateway ARGS` from the repository, run to its end, its output as text."""
    return subprocess.run(
        [sys.executable, "-m", "gateway", *args],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


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


@dataclass
class GatewayProcess:
    """A `python -m gateway run` process: where it listens, where its output goes."""

    process: subprocess.Popen[bytes]
    config: Path
    public_port: int
    admin_port: int
    stdout: Path
    stderr: Path

    def stop(self, timeout: float = 10.0) -> int:
        """SIGTERM, then the exit status; fails the test unless it exits within `timeout`."""
        self.process.send_signal(signal.SIGTERM)
        return self.process.wait(timeout=timeout)

    def output(self) -> str:
        return self.stdout.read_text(encoding="utf-8")

    def json_lines(self) -> list[dict[str, Any]]:
        """Its log, one JSON object per line (the default log format)."""
        return [json.loads(line) for line in self.output().splitlines() if line.strip()]


@dataclass
class Reply:
    status: int
    headers: http.client.HTTPMessage
    body: bytes

    @property
    def outcome(self) -> str | None:
        return self.headers.get("X-Gateway-Outcome")

    def json(self) -> Any:
        return json.loads(self.body)


def http_get(
    port: int, target: str, timeout: float = 10.0, headers: dict[str, str] | None = None
) -> Reply:
    """One GET to the gateway on 127.0.0.1 with the standard library (no event loop needed)."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        connection.request("GET", target, headers=headers or {})
        response = connection.getresponse()
        return Reply(response.status, response.headers, response.read())
    finally:
        connection.close()


def answers(port: int, path: str = "/readyz") -> bool:
    """Whether the port answers 200 at `path` now (False while it is not listening yet)."""
    try:
        return http_get(port, path, timeout=1).status == 200
    except OSError:
        return False
