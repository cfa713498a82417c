"""Queued routes as a process: the real `python -m gateway run` and its `queue` command.

A `Harness` writes configs with fixed loopback ports and a store (an SQLite file in the test's
directory, or a PostgreSQL URL), starts gateway processes on them, and kills whatever is still
running at the end. `Gateway` sends postbacks and reads the admin port; `queue_stats` and
`queue_list` read the store through the CLI, as an operator would.
"""

from __future__ import annotations

import json
import re
import resource
import signal
import socket
import subprocess
import sys
import threading
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any
from urllib.parse import urlencode

import pytest

from tests.support import processes
from tests.support.gatewayconfig import gateway_config, route, upstream
from tests.support.processes import (
    REPO,
    SECRET,
    Reply,
    free_port,
    gateway_command,
    http_get,
    spawn_gateway,
)
from tests.support.waiting import eventually

START_TIMEOUT = 15.0
COMMAND_TIMEOUT = 30.0
STOP_TIMEOUT = 10.0
FAST_QUEUE = {"retry_base": "100ms", "retry_cap": "500ms"}


# -- helpers ----------------------------------------------------------------------------------


# -- the gateway process ----------------------------------------------------------------------


def durable_route(
    app_url: str,
    *,
    delivery: str = "queued",
    timeout: str = "2s",
    queue: dict[str, str] | None = None,
) -> dict[str, Any]:
    """A route as these tests use it: loopback only, one upstream without inline retries,
    and (when queued) a queue that retries fast."""
    settings: dict[str, Any] = {"delivery": delivery}
    if delivery == "queued":
        settings["queue"] = {**FAST_QUEUE, **(queue or {})}
    app = upstream(app_url, timeout=timeout, retries=0)
    return route([app], allow_ips=["127.0.0.1"], **settings)


@dataclass(frozen=True)
class Setup:
    """A config file (fixed ports, one store) that survives the processes started on it."""

    config: Path
    store: str  # a file path (SQLite) or a postgresql:// URL
    public_port: int
    admin_port: int


@dataclass
class Gateway:
    process: subprocess.Popen[bytes]
    setup: Setup
    stdout: Path
    stderr: Path

    def postback(self, route: str, ymid: str, **extra: str) -> Reply:
        params = {"uid": ymid, "event": "click", "zone": "42", **extra, "token": SECRET}
        return http_get(self.setup.public_port, f"/postback/{route}?{urlencode(params)}")

    def admin(self, path: str) -> Reply:
        return http_get(self.setup.admin_port, path)

    def metrics(self) -> str:
        reply = self.admin("/metrics")
        assert reply.status == 200, reply
        return reply.body.decode()

    def output(self) -> str:
        return self.stdout.read_text(encoding="utf-8", errors="replace")

    def log_lines(self) -> list[dict[str, Any]]:
        lines = []
        for line in self.output().splitlines():
            try:
                parsed = json.loads(line)
            except json.JSONDecodeError:
                continue
            if isinstance(parsed, dict):
                lines.append(parsed)
        return lines

    def is_ready(self) -> bool:
        if self.process.poll() is not None:
            raise AssertionError(
                f"gateway exited with {self.process.returncode}; stderr:\n"
                + self.stderr.read_text(encoding="utf-8", errors="replace")
                + "\nstdout:\n"
                + self.output()
            )
        try:
            ready = self.admin("/readyz").status == 200
            with socket.create_connection(("127.0.0.1", self.setup.public_port), timeout=1):
                return ready
        except OSError:
            return False

    def crash(self) -> None:
        """SIGKILL: no drain, no shutdown code, exactly like a power cut for the process."""
        self.process.send_signal(signal.SIGKILL)
        assert self.process.wait(timeout=STOP_TIMEOUT) == -signal.SIGKILL

    def stop(self) -> int:
        self.process.send_signal(signal.SIGTERM)
        return self.process.wait(timeout=STOP_TIMEOUT)


def _drain(pipe: IO[bytes], sink_path: Path) -> None:
    with sink_path.open("ab") as sink:
        for chunk in iter(lambda: pipe.read1(65536), b""):  # type: ignore[attr-defined]
            sink.write(chunk)
            sink.flush()


class Harness:
    """Configs and gateway processes of one test; `close` ends all of them."""

    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.gateways: list[Gateway] = []
        self._drains: list[threading.Thread] = []

    def setup(
        self,
        routes: dict[str, dict[str, Any]],
        server: dict[str, Any] | None = None,
        *,
        store: str | None = None,
        name: str = "config",
    ) -> Setup:
        """A config `NAME.yaml` on new ports; its store is `store` (a postgresql:// URL, or
        a file path), by default the SQLite file gw.db in the test's directory."""
        public_port, admin_port = free_port(), free_port()
        store = store or str(self.tmp / "gw.db")
        settings = {
            "listen": f"127.0.0.1:{public_port}",
            "admin_listen": f"127.0.0.1:{admin_port}",
            "reload_interval": 0,
            "shutdown_grace": "3s",
            **(server or {}),
        }
        config = self.tmp / f"{name}.yaml"
        config.write_text(gateway_config(routes=routes, server=settings, store=store))
        return Setup(config, store, public_port, admin_port)

    def start(self, setup: Setup, file_size_limit: int | None = None) -> Gateway:
        """`run --config`, ready to serve; with `file_size_limit`, under RLIMIT_FSIZE."""
        index = len(self.gateways)
        stdout, stderr = self.tmp / f"gateway{index}.out", self.tmp / f"gateway{index}.err"
        if file_size_limit is None:
            process = spawn_gateway(setup.config, processes.command_env(), stdout, stderr)
        else:
            process = self._spawn_limited(setup.config, file_size_limit, stdout, stderr)
        gateway = Gateway(process, setup, stdout, stderr)
        self.gateways.append(gateway)
        eventually(gateway.is_ready, START_TIMEOUT, explain=stderr.read_text)
        return gateway

    def _spawn_limited(
        self, config: Path, limit: int, stdout: Path, stderr: Path
    ) -> subprocess.Popen[bytes]:
        """The same command as spawn_gateway, with a file-size limit on the process.

        Its output goes through pipes (a pipe is not a file, so the limit does not silence the
        log) to files written by this process.
        """

        def limit_file_size() -> None:
            resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

        process = subprocess.Popen(
            [sys.executable, "-m", "gateway", "run", "--config", str(config)],
            cwd=REPO,
            env=processes.command_env(),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            preexec_fn=limit_file_size,
        )
        assert process.stdout is not None and process.stderr is not None
        for pipe, path in ((process.stdout, stdout), (process.stderr, stderr)):
            path.touch()
            drain = threading.Thread(target=_drain, args=(pipe, path), daemon=True)
            drain.start()
            self._drains.append(drain)
        return process

    def close(self) -> None:
        for gateway in self.gateways:
            if gateway.process.poll() is None:
                gateway.process.kill()
            gateway.process.wait(timeout=COMMAND_TIMEOUT)
        for drain in self._drains:
            drain.join(timeout=5)


@pytest.fixture
def harness(tmp_path: Path) -> Iterator[Harness]:
    running = Harness(tmp_path)
    try:
        yield running
    finally:
        running.close()


# -- the `queue` command ----------------------------------------------------------------------


def queue(setup: Setup, *args: str) -> subprocess.CompletedProcess[str]:
    config = str(setup.config)
    return gateway_command("queue", "--config", config, *args, env=processes.command_env())


def queue_stats(setup: Setup) -> dict[str, dict[str, int]]:
    """`queue stats` as {route: {state: deliveries}}; a state not printed is 0."""
    result = queue(setup, "stats")
    assert result.returncode == 0, result.stdout + result.stderr
    routes: dict[str, dict[str, int]] = {}
    for line in result.stdout.splitlines():
        match = re.fullmatch(r"route (\S+): (.*)", line)
        if not match:
            continue
        counts = routes.setdefault(match.group(1), Counter())
        for part in match.group(2).split(", "):
            state, _, number = part.partition(" ")
            if number.isdigit():
                counts[state] = int(number)
    return routes


@dataclass(frozen=True)
class Row:
    """One line of `queue list`."""

    event_id: int
    route: str
    state: str
    attempts: int
    status: str
    ymid: str
    error: str


def queue_list(setup: Setup, *args: str) -> list[Row]:
    result = queue(setup, "list", *args)
    assert result.returncode == 0, result.stdout + result.stderr
    rows = []
    for line in result.stdout.splitlines():
        event_id, _, route, state, attempts, status, _, ymid, error = line.split("\t")
        rows.append(
            Row(
                int(event_id),
                route,
                state,
                int(attempts.removeprefix("attempts ")),
                status.removeprefix("status "),
                ymid.removeprefix("ymid="),
                error,
            )
        )
    return rows


def settled(setup: Setup, route: str, delivered: int) -> dict[str, int] | None:
    """The route's counts once `delivered` deliveries are recorded and none is pending."""
    counts = queue_stats(setup).get(route, {})
    done = counts.get("delivered", 0) == delivered and not counts.get("pending")
    return dict(counts) if done else None


def printed_stats(setup: Setup) -> Callable[[], str]:
    """`queue stats` as printed, for a failure message."""
    return lambda: queue(setup, "stats").stdout


def assert_queued(reply: Reply) -> None:
    assert (reply.status, reply.outcome) == (200, "queued"), (reply.status, reply.body)
    assert reply.json() == {"outcome": "queued"}


def assert_all_queued(gateway: Gateway, route: str, ymids: list[str]) -> None:
    """Send one postback per ymid, ten at a time; every one must be acknowledged as queued."""
    with ThreadPoolExecutor(max_workers=10) as pool:
        replies = list(pool.map(lambda ymid: gateway.postback(route, ymid), ymids, timeout=30))
    for reply in replies:
        assert_queued(reply)
