"""Shared fixtures: real HTTP servers on loopback for the gateway and for the apps behind it."""

from __future__ import annotations

import asyncio
import json
import socket
import subprocess
import textwrap
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from multidict import MultiDict

from gateway.app import public_runner
from gateway.config import GatewayConfig, parse_config
from gateway.durable import STORE_SCHEMA
from gateway.runtime import Runtime
from gateway.store import Store
from tests.processes import free_port
from tests.rawupstream import start_server  # noqa: F401  (a fixture: raw upstreams)

SECRET = "s3cret-key-0123456789"


@dataclass
class Received:
    """One request as the upstream saw it."""

    path: str
    query: MultiDict[str]
    query_string: str
    headers: dict[str, str]
    answered: int | None = None  # the status sent back (None: connection dropped)


# What the upstream does with one request: an HTTP status, ("sleep", seconds) then 200,
# or "drop" to close the connection without answering.
Behaviour = int | tuple[str, float] | str


@dataclass
class RecordingUpstream:
    """A real HTTP server on 127.0.0.1 that records every request and follows a script."""

    url: str = ""
    received: list[Received] = field(default_factory=list)
    script: list[Behaviour] = field(default_factory=list)
    default: Behaviour = 200
    body: str = "OK"

    async def handle(self, request: web.Request) -> web.StreamResponse:
        received = Received(
            request.path, MultiDict(request.query), request.query_string, dict(request.headers)
        )
        self.received.append(received)
        behaviour = self.script.pop(0) if self.script else self.default
        if behaviour == "drop":
            assert request.transport is not None
            request.transport.close()
            return web.Response()
        if isinstance(behaviour, tuple):
            await asyncio.sleep(behaviour[1])
            received.answered = 200
            return web.Response(text=self.body)
        assert isinstance(behaviour, int)
        received.answered = behaviour
        return web.Response(status=behaviour, text=self.body if behaviour < 300 else "nope")


UpstreamFactory = Callable[..., Awaitable[RecordingUpstream]]


@pytest.fixture
async def start_upstream() -> AsyncIterator[UpstreamFactory]:
    runners: list[web.AppRunner] = []

    async def start(**settings: Any) -> RecordingUpstream:
        upstream = RecordingUpstream(**settings)
        app = web.Application()
        app.router.add_route("*", "/{path:.*}", upstream.handle)
        runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.1)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        runners.append(runner)
        port = runner.addresses[0][1]
        upstream.url = f"http://127.0.0.1:{port}"
        return upstream

    yield start
    for runner in runners:
        await runner.cleanup()


@dataclass
class RunningGateway:
    url: str
    config: GatewayConfig
    runner: web.ServerRunner
    runtime: Runtime

    def postback_url(self, path: str = "/postback/tapper") -> str:
        return self.url + path


GatewayFactory = Callable[..., Awaitable[RunningGateway]]


@pytest.fixture
async def start_gateway() -> AsyncIterator[GatewayFactory]:
    """Start the real gateway (public port) from YAML text on a loopback socket."""
    running: list[RunningGateway] = []

    async def start(
        yaml_text: str,
        env: dict[str, str] | None = None,
        host: str = "127.0.0.1",
    ) -> RunningGateway:
        config = parse_config(textwrap.dedent(yaml_text), {"MONETAG_SECRET": SECRET, **(env or {})})
        runtime = Runtime(config)
        await runtime.start()
        runner = public_runner(runtime)
        await runner.setup()
        await web.TCPSite(runner, host, 0).start()
        port = runner.addresses[0][1]
        shown_host = "127.0.0.1" if host in ("0.0.0.0", "::") else host
        if ":" in shown_host:
            shown_host = f"[{shown_host}]"
        running.append(RunningGateway(f"http://{shown_host}:{port}", config, runner, runtime))
        return running[-1]

    yield start
    for gateway in running:
        await gateway.runner.cleanup()
        await gateway.runtime.close(1)


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


def route_yaml(upstream_urls: list[str], extra: str = "", server: str = "", top: str = "") -> str:
    """A config with one route `tapper` at /postback/tapper; `extra` adds route keys, `server`
    server keys and `top` top-level sections (such as `store:`)."""
    upstreams = "\n".join(
        f"      - url: {url}\n        timeout: 1s\n        retries: 2" for url in upstream_urls
    )
    return (
        f"{top}server:\n  listen: 127.0.0.1:0\n  admin_listen: 127.0.0.1:0\n{server}"
        "routes:\n"
        "  tapper:\n"
        "    path: /postback/tapper\n"
        "    allow_ips: [127.0.0.1, '::1']\n"
        "    secret:\n"
        "      query_param: token\n"
        "      keys: ['${MONETAG_SECRET}']\n"
        "    aliases: {event: event_type, uid: ymid, zone: zone_id}\n"
        f"{extra}"
        "    upstreams:\n"
        f"{upstreams}\n"
    )


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return tmp_path / "gateway.db"


@pytest.fixture
async def store(db_path: Path) -> AsyncIterator[Store]:
    """A real SQLite store in a fresh file."""
    store = Store(str(db_path), STORE_SCHEMA)
    await asyncio.wait_for(store.open(), 10)
    yield store
    await asyncio.wait_for(store.close(), 10)


class RedisServer:
    """A real redis-server on a free loopback port, which a test may stop and start again."""

    def __init__(self, directory: Path) -> None:
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self._directory = directory
        self._process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self._process = subprocess.Popen(
            ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no", "--dir", str(self._directory)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            with socket.socket() as probe:
                if probe.connect_ex(("127.0.0.1", self.port)) == 0:
                    return
            time.sleep(0.02)
        raise RuntimeError(f"redis-server did not start on port {self.port}")

    def stop(self) -> None:
        if self._process is not None:
            self._process.terminate()
            self._process.wait(timeout=10)
            self._process = None


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    """Never skipped: the test command installs redis-server (see scripts/test)."""
    server = RedisServer(tmp_path)
    server.start()
    yield server
    server.stop()


def access_lines(capsys: pytest.CaptureFixture[str]) -> list[dict[str, Any]]:
    """The access log lines the gateway wrote to stdout so far (and the raw text)."""
    return [
        json.loads(line)
        for line in capsys.readouterr().out.splitlines()
        if '"logger": "gateway.access"' in line
    ]
