"""Shared fixtures: real HTTP servers on loopback for the gateway and for the apps behind it."""

from __future__ import annotations

import asyncio
import itertools
import json
import socket
import subprocess
import textwrap
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import uvloop
from aiohttp import web

from gateway.config import GatewayConfig, ListenAddress, parse_config
from gateway.deadline import Deadline
from gateway.durable.sqlite_outbox import STORE_SCHEMA
from gateway.durable.sqlite_writer import SqliteWriter
from gateway.metrics import Metrics
from gateway.runtime import Runtime
from gateway.serving.app import public_runner
from tests.support.postgres import PostgresCluster
from tests.support.processes import SECRET, free_port
from tests.support.rawupstream import start_server  # noqa: F401  (a fixture: raw upstreams)
from tests.support.upstream import RecordingUpstream
from tests.support.waiting import eventually

# The fixtures that need more than this process, and the marker a test asking for one must
# carry (pyproject.toml describes the markers): `./scripts/test --quick` deselects marked tests,
# so an unmarked one would slow the quick loop down or fail it where no server can start.
NEEDS_MARKER = {
    "postgres": "postgres",
    "postgres_url": "postgres",
    "own_postgres": "postgres",
    "redis_server": "process",
    "harness": "process",
    "docs_environment": "process",  # tests/test_docs_commands.py's gateway, for every docs line
    "browser": "browser",
}


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    unmarked = [
        f"{item.nodeid}: uses the fixture {fixture!r} without the marker {marker!r}"
        for item in items
        for fixture, marker in NEEDS_MARKER.items()
        if fixture in getattr(item, "fixturenames", ()) and item.get_closest_marker(marker) is None
    ]
    if unmarked:
        raise pytest.UsageError("\n".join(unmarked))


# The event loops an in-process test can run on, by name (pytest-asyncio's loop factories). The
# gateway runs on uvloop where it is installed (gateway/serving/event_loop.py) and on asyncio's
# loop otherwise; the tests of the code that touches transports and sockets run on both, by
# `pytestmark = pytest.mark.asyncio(loop_factories=BOTH_LOOPS)`. Every other test: asyncio's.
EVENT_LOOPS: dict[str, Callable[[], asyncio.AbstractEventLoop]] = {
    "asyncio": asyncio.new_event_loop,
    "uvloop": uvloop.new_event_loop,
}
BOTH_LOOPS = list(EVENT_LOOPS)


def pytest_asyncio_loop_factories(
    config: pytest.Config, item: pytest.Item
) -> Mapping[str, Callable[[], asyncio.AbstractEventLoop]]:
    marker = item.get_closest_marker("asyncio")
    wanted = marker.kwargs.get("loop_factories") if marker is not None else None
    if wanted is None:
        return {"asyncio": EVENT_LOOPS["asyncio"]}
    unknown = set(wanted) - set(EVENT_LOOPS)
    if unknown:  # pytest-asyncio would skip such a test: fail instead, never skip in silence
        raise pytest.UsageError(f"{item.nodeid}: no event loop named {sorted(unknown)}")
    return EVENT_LOOPS


UpstreamFactory = Callable[..., RecordingUpstream]


@pytest.fixture
def start_upstream() -> Iterator[UpstreamFactory]:
    """Start recording upstreams (`RecordingUpstream(**settings)`); all closed after the test."""
    started: list[RecordingUpstream] = []

    def start(**settings: Any) -> RecordingUpstream:
        started.append(RecordingUpstream(**settings))
        return started[-1]

    yield start
    for upstream in started:
        upstream.close()


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
        runtime = Runtime(config, Metrics())
        await runtime.start()
        runner = public_runner(runtime)
        await runner.setup()
        await web.TCPSite(runner, host, 0).start()
        here = ListenAddress(host, runner.addresses[0][1]).from_here
        running.append(RunningGateway(f"http://{here}", config, runner, runtime))
        return running[-1]

    yield start
    for gateway in running:
        await gateway.runner.cleanup()
        await gateway.runtime.close(Deadline(1))


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


Sender = Callable[[str], aiohttp.ClientSession]


@pytest.fixture
async def sender() -> AsyncIterator[Sender]:
    """`sender("127.0.0.7")`: a client whose connections come from that loopback address, a
    real other sender as the gateway sees it (all of 127.0.0.0/8 is this machine's)."""
    sessions: list[aiohttp.ClientSession] = []

    def session_from(address: str) -> aiohttp.ClientSession:
        connector = aiohttp.TCPConnector(local_addr=(address, 0))
        sessions.append(aiohttp.ClientSession(connector=connector))
        return sessions[-1]

    yield session_from
    for session in sessions:
        await session.close()


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def store_at(request: pytest.FixtureRequest, tmp_path: Path) -> str | Path:
    """Where the store is kept, once of each kind: an SQLite file, or a database on the test
    PostgreSQL (a test asking for it runs twice, the second marked postgres)."""
    if request.param == "sqlite":
        return tmp_path / "gw.db"
    url: str = request.getfixturevalue("postgres_url")
    return url


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return tmp_path / "gateway.db"


class Commits:
    """A SqliteWriter's `on_commit` that keeps what it is told: True per commit, False per
    failed one. How many operations share a commit is seen by comparing this with the
    operations run."""

    def __init__(self) -> None:
        self.results: list[bool] = []  # appended by the store's writer thread only

    def __call__(self, ok: bool) -> None:
        self.results.append(ok)

    def __len__(self) -> int:
        return len(self.results)

    @property
    def failed(self) -> int:
        return self.results.count(False)


@pytest.fixture
def commits() -> Commits:
    return Commits()


@pytest.fixture
async def store(db_path: Path, commits: Commits) -> AsyncIterator[SqliteWriter]:
    """A real SQLite store in a fresh file; its commits are told to `commits`."""
    store = SqliteWriter(str(db_path), STORE_SCHEMA, on_commit=commits)
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
            [
                "redis-server",
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                str(self._directory),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        eventually(self.accepts, timeout=10)

    def accepts(self) -> bool:
        with socket.socket() as probe:
            return probe.connect_ex(("127.0.0.1", self.port)) == 0

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


@pytest.fixture(scope="session")
def postgres() -> Iterator[PostgresCluster]:
    """One PostgreSQL server for the whole run, started on first use. Never skipped: the test
    command installs PostgreSQL (see scripts/test)."""
    yield from _running_cluster()


_DATABASE_NUMBERS = itertools.count(1)


@pytest.fixture
def postgres_url(postgres: PostgresCluster) -> Iterator[str]:
    """The URL of a new, empty database (`t_<n>`) on the shared server, this test's alone;
    dropped after it, with whatever sessions the test left open."""
    name = f"t_{next(_DATABASE_NUMBERS)}"
    url = postgres.create_database(name)
    yield url
    postgres.drop_database(name)


@pytest.fixture
def own_postgres() -> Iterator[PostgresCluster]:
    """A started PostgreSQL server of this test's own, which it may `stop`, `start` again or
    `kill`; removed after it."""
    yield from _running_cluster()


def _running_cluster() -> Iterator[PostgresCluster]:
    cluster = PostgresCluster()
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.remove()


def access_lines(capsys: pytest.CaptureFixture[str]) -> list[dict[str, Any]]:
    """The access log lines the gateway wrote to stdout so far (and the raw text)."""
    return [
        json.loads(line)
        for line in capsys.readouterr().out.splitlines()
        if '"logger": "gateway.access"' in line
    ]
