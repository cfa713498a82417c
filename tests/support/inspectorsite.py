"""A gateway with its inspector, for the inspector's tests: both ports on loopback sockets.

`start_site` starts the real gateway from YAML text on the test's event loop as `run` serves
it: the public port and the admin port (health, readiness, metrics and the inspector) where
the config says, so what the pages print about the gateway (the replay line's address) is
true. The admin token is ADMIN_TOKEN, from the environment as operators give it.

Use the fixture by name: `from tests.support.inspectorsite import start_site`, with it in the test
module's `__all__`.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import pytest
from aiohttp import web

from gateway.config import GatewayConfig, parse_config
from gateway.deadline import Deadline
from gateway.metrics import Metrics
from gateway.runtime import Runtime
from gateway.serving.app import admin_runner, public_runner
from gateway.tls import server_context
from tests.conftest import SECRET
from tests.support.gatewayconfig import gateway_config, upstream
from tests.support.processes import Reply, free_port, http_get
from tests.support.sessionsconfig import SESSIONS_ENV
from tests.support.upstream import RecordingUpstream

ADMIN_TOKEN = "inspector-token-0123456789abcdef"
ADMIN_ENV = {"ADMIN_TOKEN": ADMIN_TOKEN}
WRONG_KEY = "not-the-key-0000000000"
FAST_QUEUE = {"retry_base": "100ms", "retry_cap": "500ms"}


@dataclass
class Site:
    """A running gateway seen from outside: its public port for postbacks, its admin port's
    pages, and the app behind it."""

    config: GatewayConfig
    admin: str  # the admin port's base URL, no trailing slash
    app: RecordingUpstream
    runtime: Runtime | None = None  # the gateway's, to reload it or read its metrics

    def url(self, path: str) -> str:
        return self.admin + path

    @property
    def admin_port(self) -> int:
        return self.config.server.admin_listen.port

    def send(
        self, ymid: str, *, route: str = "tapper", key: str | None = SECRET, **params: str
    ) -> Reply:
        """One postback, as Monetag sends it (short names, the key in `token`); blocking."""
        query = {"uid": ymid, "event": "click", "zone": "42", **params}
        if key is not None:
            query["token"] = key
        return http_get(self.config.server.listen.port, f"/postback/{route}?{urlencode(query)}")


SiteFactory = Callable[[str, RecordingUpstream], Awaitable[Site]]


@pytest.fixture
async def start_site() -> AsyncIterator[SiteFactory]:
    """Start gateways from YAML text, each with the app it forwards to; closed after the test."""
    started: list[tuple[Runtime, list[web.BaseRunner]]] = []

    async def start(yaml_text: str, app: RecordingUpstream) -> Site:
        config = parse_config(yaml_text, {"MONETAG_SECRET": SECRET, **ADMIN_ENV, **SESSIONS_ENV})
        runtime = Runtime(config, Metrics())
        await runtime.start()
        runners: list[web.BaseRunner] = [public_runner(runtime), admin_runner(runtime)]
        started.append((runtime, runners))
        # the public port serves TLS when the config says so, as `run` serves it
        tls = server_context(config.server.tls) if config.server.tls else None
        for runner, address, context in zip(
            runners,
            (config.server.listen, config.server.admin_listen),
            (tls, None),
            strict=True,
        ):
            await runner.setup()
            await web.TCPSite(runner, address.host, address.port, ssl_context=context).start()
        return Site(config, f"http://127.0.0.1:{config.server.admin_listen.port}", app, runtime)

    yield start
    for runtime, runners in started:
        for runner in runners:
            await runner.cleanup()
        await runtime.close(Deadline(1))


def server_settings(token: bool = True, **settings: Any) -> dict[str, Any]:
    """Both ports on free loopback ports; with `token`, the admin port needs ADMIN_TOKEN.
    `settings` are other server keys (metrics_need_token=True...)."""
    return {
        "listen": f"127.0.0.1:{free_port()}",
        "admin_listen": f"127.0.0.1:{free_port()}",
        **({"admin_token": "${ADMIN_TOKEN}"} if token else {}),
        **settings,
    }


def tapper_config(app: RecordingUpstream, token: bool = True, **server: Any) -> str:
    """One sync route, `tapper`, forwarding to `app` once (no inline retries)."""
    return gateway_config(upstream(app.url, retries=0), server=server_settings(token, **server))


def queued_config(app: RecordingUpstream, store: Path, token: bool = True, **queue: Any) -> str:
    """One queued route, `tapper`, on an SQLite store at `store`; its queue retries fast and
    takes the other `queue` keys given (max_attempts=1...)."""
    return gateway_config(
        upstream(app.url, retries=0),
        server=server_settings(token),
        store=store,
        delivery="queued",
        queue={**FAST_QUEUE, **queue},
    )
