"""Wiring: the public app (postbacks only) and the admin app (health, readiness, metrics)."""

from __future__ import annotations

from collections.abc import AsyncIterator

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from .outcome import RUNTIME, answer
from .runtime import Runtime


def create_app(runtime: Runtime, shutdown_grace: float = 30.0) -> web.Application:
    """The public application. Upstream pools live exactly as long as the app."""
    app = web.Application()
    app[RUNTIME] = runtime

    async def upstream_pools(app: web.Application) -> AsyncIterator[None]:
        await runtime.start()
        yield
        await runtime.close(shutdown_grace)

    async def pipeline(request: web.Request) -> web.StreamResponse:
        return await runtime.gateway.handle(request)

    async def postback(request: web.Request) -> web.StreamResponse:
        # `answer` wraps the pipeline directly rather than as a middleware: one layer less
        # of aiohttp machinery on every postback, same behaviour
        return await answer(request, pipeline)

    app.cleanup_ctx.append(upstream_pools)
    app.router.add_route("*", "/{path:.*}", postback)
    return app


def create_admin_app(runtime: Runtime) -> web.Application:
    """Health, readiness and metrics on the admin port; never on the public one."""
    admin = web.Application()

    async def healthz(request: web.Request) -> web.Response:
        return web.json_response({"status": "alive"})

    async def readyz(request: web.Request) -> web.Response:
        if runtime.ready:
            status, code = "ready", 200
        else:
            status, code = ("draining" if runtime.draining else "starting"), 503
        body = {"status": status, "config_checksum": runtime.config.checksum}
        return web.json_response(body, status=code)

    async def metrics(request: web.Request) -> web.Response:
        response = web.Response(body=generate_latest(runtime.metrics.registry))
        response.headers["Content-Type"] = CONTENT_TYPE_LATEST
        return response

    admin.router.add_get("/healthz", healthz)
    admin.router.add_get("/readyz", readyz)
    admin.router.add_get("/metrics", metrics)
    return admin
