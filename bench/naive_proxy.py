"""The reference: the simplest pass-through an operator could deploy instead of the gateway.

An aiohttp server that forwards the query string to the app with one shared ClientSession and
returns the app's answer. It checks nothing: no allowlist, no secret, no names, no dedup.
"""

from __future__ import annotations

import sys
from collections.abc import AsyncIterator

import aiohttp
from aiohttp import web

SESSION = web.AppKey("session", aiohttp.ClientSession)


def create_proxy(upstream: str) -> web.Application:
    app = web.Application()

    async def session(app: web.Application) -> AsyncIterator[None]:
        async with aiohttp.ClientSession() as client:
            app[SESSION] = client
            yield

    async def forward(request: web.Request) -> web.Response:
        async with request.app[SESSION].get(upstream, params=request.query) as response:
            return web.Response(status=response.status, body=await response.read())

    app.cleanup_ctx.append(session)
    app.router.add_get("/{path:.*}", forward)
    return app


if __name__ == "__main__":
    port, upstream = int(sys.argv[1]), sys.argv[2]
    web.run_app(create_proxy(upstream), host="127.0.0.1", port=port, print=None, access_log=None)
