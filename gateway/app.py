"""Wiring: the public app (postbacks only) and the admin app (health), sharing one Gateway."""

from __future__ import annotations

from collections.abc import AsyncIterator

import aiohttp
from aiohttp import web

from .config import GatewayConfig
from .dedup import DedupMemory
from .forward import Forwarder
from .outcome import answer
from .pipeline import Gateway

GATEWAY = web.AppKey("gateway", Gateway)
COPY_GRACE_SECONDS = 10.0
MAX_UPSTREAM_CONNECTIONS = 256


def create_app(
    config: GatewayConfig, dedup_memories: dict[str, DedupMemory] | None = None
) -> web.Application:
    """The public application. Its ClientSession lives exactly as long as the app."""
    app = web.Application(middlewares=[answer])

    async def upstream_session(app: web.Application) -> AsyncIterator[None]:
        connector = aiohttp.TCPConnector(limit=MAX_UPSTREAM_CONNECTIONS, ttl_dns_cache=60)
        async with aiohttp.ClientSession(connector=connector) as session:
            app[GATEWAY] = Gateway(config, Forwarder(session), dedup_memories)
            yield
            await app[GATEWAY].finish_copies(COPY_GRACE_SECONDS)

    async def postback(request: web.Request) -> web.StreamResponse:
        return await request.app[GATEWAY].handle(request)

    app.cleanup_ctx.append(upstream_session)
    app.router.add_route("*", "/{path:.*}", postback)
    return app


def create_admin_app(public: web.Application) -> web.Application:
    """Health endpoints on the admin port; never on the public one."""
    admin = web.Application()

    async def healthz(request: web.Request) -> web.Response:
        return web.json_response({"status": "alive"})

    async def readyz(request: web.Request) -> web.Response:
        ready = GATEWAY in public
        return web.json_response(
            {"status": "ready" if ready else "starting"}, status=200 if ready else 503
        )

    admin.router.add_get("/healthz", healthz)
    admin.router.add_get("/readyz", readyz)
    return admin
