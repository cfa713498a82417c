"""A legacy app written the way Monetag's sample handlers are: it reads `event_type` and `ymid`.

It stands behind the gateway in the demo (`scripts/run`) and in the end-to-end test. Like the
samples, it trusts what it is given: the gateway is what makes that safe. GET /rewards lists
what it granted.
"""

from __future__ import annotations

import argparse
import logging

from aiohttp import web

GRANTED = web.AppKey("granted", list[dict[str, str]])
log = logging.getLogger("demo_app")


def create_demo_app() -> web.Application:
    app = web.Application()
    app[GRANTED] = []

    async def postback(request: web.Request) -> web.Response:
        ymid = request.query.get("ymid")
        event_type = request.query.get("event_type")
        if not ymid or not event_type:
            return web.Response(status=400, text="missing ymid or event_type")
        if event_type == "click":  # the sample grants rewards on clicks
            app[GRANTED].append({"ymid": ymid, "event_type": event_type})
            log.warning("reward granted to %s", ymid)
        return web.Response(text="OK")

    async def rewards(request: web.Request) -> web.Response:
        return web.json_response(app[GRANTED])

    app.router.add_get("/postback", postback)
    app.router.add_get("/rewards", rewards)
    return app


def main() -> None:
    parser = argparse.ArgumentParser(description="demo app behind the gateway")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=3000)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="demo app: %(message)s")
    web.run_app(create_demo_app(), host=args.host, port=args.port, print=None)


if __name__ == "__main__":
    main()
