"""The fastest app we can put behind the gateway: answers every request `OK`."""

from __future__ import annotations

import sys

from aiohttp import web


async def ok(request: web.Request) -> web.Response:
    return web.Response(text="OK")


if __name__ == "__main__":
    app = web.Application()
    app.router.add_route("GET", "/{path:.*}", ok)
    web.run_app(app, host="127.0.0.1", port=int(sys.argv[1]), print=None, access_log=None)
