"""The second reference: a pass-through as lean as the gateway's own plumbing, checking nothing.

aiohttp's low-level server with one handler (as the gateway's public port) forwarding the query
string with the gateway's own upstream client (`gateway/forwarding/upstream_client.py`). Set
against the gateway, it shows what the checks themselves cost, apart from the HTTP machinery
both share.
"""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

from aiohttp import web
from yarl import URL

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # this checkout's gateway package

from gateway.forwarding.upstream_client import UpstreamClient


async def serve(port: int, upstream: str) -> None:
    client = UpstreamClient()

    async def forward(request: web.BaseRequest) -> web.Response:
        url = URL(f"{upstream}?{request.rel_url.raw_query_string}", encoded=True)
        answer = await client.get(url, {}, 5.0)
        return web.Response(status=answer.status, body=answer.body)

    runner = web.ServerRunner(web.Server(forward, access_log=None))
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    await asyncio.Event().wait()  # until terminated


if __name__ == "__main__":
    asyncio.run(serve(int(sys.argv[1]), sys.argv[2]))
