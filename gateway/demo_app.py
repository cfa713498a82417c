"""A legacy app written the way Monetag's sample handlers are: it reads `event_type` and `ymid`.

It stands behind the gateway in the demo (`scripts/run`) and in the end-to-end test. Like the
samples, it trusts what it is given: the gateway is what makes that safe. It grants a reward
for a click, or for an event Monetag marks `reward_event_type=valued` (a rewarded ad watched
through), to the verified Telegram user (`user_id`) when the gateway names one, else to the
ymid. GET /rewards lists what it granted.

Given the gateway's URL (`--gateway-url`, `scripts/run --miniapp`), it also plays the other
two parties of a Mini App's reward session (config.miniapp.yaml): the Mini App's page
(GET /miniapp), Telegram, which signs the page's initData with the bot's token
(GET /miniapp/init-data, for a demo user), and Monetag, which sends the postback once the ad
was shown (POST /miniapp/show-ad). It imports nothing from the gateway: it only talks to it.
"""

from __future__ import annotations

import argparse
import hashlib
import hmac
import html
import json
import logging
import os
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from urllib.parse import urlencode

import aiohttp
from aiohttp import web

GRANTED = web.AppKey("granted", list[dict[str, str]])
log = logging.getLogger("demo_app")

DEMO_USER_ID = 1001  # the Telegram user the demo's initData is signed for
POSTBACK_PATH = "/postback/miniapp"  # config.miniapp.yaml's route
SESSIONS_PATH = "/ymid/miniapp"  # its sessions.path (the default for route miniapp)
DEMO_ZONE_ID = "8790478"
MINIAPP_ENVIRONMENT = ("TELEGRAM_BOT_TOKEN", "MONETAG_SECRET")  # secrets: never on a command line


@dataclass(frozen=True)
class MiniAppDemo:
    """What standing in for Telegram and Monetag takes: the gateway's public URL, the bot's
    token (to sign initData) and the route's key (to send postbacks)."""

    gateway_url: str
    bot_token: str = field(repr=False)
    monetag_secret: str = field(repr=False)


MINIAPP = web.AppKey("miniapp", MiniAppDemo)
GATEWAY_CLIENT = web.AppKey("gateway_client", aiohttp.ClientSession)


def create_demo_app(miniapp: MiniAppDemo | None = None) -> web.Application:
    app = web.Application()
    app[GRANTED] = []

    async def postback(request: web.Request) -> web.Response:
        ymid = request.query.get("ymid")
        event_type = request.query.get("event_type")
        if not ymid or not event_type:
            return web.Response(status=400, text="missing ymid or event_type")
        # the sample grants rewards on clicks; a rewarded ad watched through is `valued`
        if event_type == "click" or request.query.get("reward_event_type") == "valued":
            user_id = request.query.get("user_id")  # the verified user, renamed by the gateway
            granted = {"ymid": ymid, "event_type": event_type}
            app[GRANTED].append({"user_id": user_id, **granted} if user_id else granted)
            log.warning("reward granted to %s", f"user {user_id}" if user_id else ymid)
        return web.Response(text="OK")

    async def rewards(request: web.Request) -> web.Response:
        return web.json_response(app[GRANTED])

    app.router.add_get("/postback", postback)
    app.router.add_get("/rewards", rewards)
    if miniapp is not None:
        add_miniapp(app, miniapp)
    return app


def add_miniapp(app: web.Application, miniapp: MiniAppDemo) -> None:
    """The Mini App's page, and the Telegram and Monetag stand-ins it calls."""
    app[MINIAPP] = miniapp
    app.cleanup_ctx.append(gateway_client)
    app.router.add_get("/miniapp", miniapp_page)
    app.router.add_get("/miniapp/init-data", init_data)
    app.router.add_post("/miniapp/show-ad", show_ad)


async def gateway_client(app: web.Application) -> AsyncIterator[None]:
    """One session for the postbacks sent to the gateway, for the app's lifetime."""
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=15)) as client:
        app[GATEWAY_CLIENT] = client
        yield


def signed_init_data(user_id: int, auth_date: int, bot_token: str) -> str:
    """`Telegram.WebApp.initData` as Telegram signs it: `hash` is the hex HMAC-SHA256 of the
    other fields' sorted `key=value` lines, keyed by HMAC-SHA256(key="WebAppData", msg=token)."""
    user = json.dumps({"id": user_id, "first_name": "Demo"}, separators=(",", ":"))
    fields = {"auth_date": str(auth_date), "query_id": "AAdemo-query-0001", "user": user}
    check = "\n".join(f"{name}={fields[name]}" for name in sorted(fields))
    secret = hmac.digest(b"WebAppData", bot_token.encode(), hashlib.sha256)
    fields["hash"] = hmac.new(secret, check.encode(), hashlib.sha256).hexdigest()
    return urlencode(fields)


def monetag_postback(ymid: str, secret: str) -> dict[str, str]:
    """The query Monetag sends for a rewarded ad the demo user watched, under the names of
    config.miniapp.yaml's template."""
    return {
        "token": secret,
        "ymid": ymid,
        "event": "impression",
        "value": "valued",
        "zone": DEMO_ZONE_ID,
        "user": str(DEMO_USER_ID),
    }


async def init_data(request: web.Request) -> web.Response:
    """Telegram's part: initData for the demo user, signed now with the bot's token."""
    token = request.app[MINIAPP].bot_token
    signed = signed_init_data(DEMO_USER_ID, int(time.time()), token)
    return web.json_response({"init_data": signed}, headers={"Cache-Control": "no-store"})


async def show_ad(request: web.Request) -> web.Response:
    """Monetag's part: the postback for the ad shown with this ymid, sent to the gateway; the
    answer carries the gateway's status and outcome (never the key)."""
    try:
        body = await request.json()
    except json.JSONDecodeError:
        body = None
    ymid = body.get("ymid") if isinstance(body, dict) else None
    if not isinstance(ymid, str) or not ymid:
        return web.json_response({"error": 'expected {"ymid": "..."}'}, status=400)
    miniapp = request.app[MINIAPP]
    query = monetag_postback(ymid, miniapp.monetag_secret)
    try:
        async with request.app[GATEWAY_CLIENT].get(
            miniapp.gateway_url + POSTBACK_PATH, params=query
        ) as answer:
            await answer.read()
    except (aiohttp.ClientError, TimeoutError) as error:
        reason = f"the gateway did not answer ({type(error).__name__})"
        return web.json_response({"error": reason}, status=502)
    outcome = answer.headers.get("X-Gateway-Outcome")
    log.info("postback for the ad shown: gateway answered %s %s", answer.status, outcome)
    return web.json_response({"status": answer.status, "outcome": outcome}, status=answer.status)


async def miniapp_page(request: web.Request) -> web.Response:
    gateway = html.escape(request.app[MINIAPP].gateway_url + SESSIONS_PATH)
    return web.Response(
        text=MINIAPP_PAGE.replace("{sessions_url}", gateway),
        content_type="text/html",
        headers={"Cache-Control": "no-store"},
    )


# The Mini App: ask the gateway for a ymid with initData (Telegram's, or the demo's stand-in
# outside Telegram), show the ad with it, then wait on the ymid's status until it is decided.
MINIAPP_PAGE = """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<link rel="icon" href="data:,">
<title>Mini App demo: a reward session</title>
<style>
  body { font: 16px/1.5 system-ui, sans-serif; max-width: 36rem; margin: 2rem auto;
         padding: 0 1rem; color: #1d2430; }
  button { font: inherit; padding: .5rem 1rem; margin: .25rem 0; cursor: pointer; }
  dt { font-weight: 600; margin-top: .75rem; }
  dd { margin: 0; font-family: ui-monospace, monospace; word-break: break-all; }
  #state { font-size: 1.25rem; }
</style>
</head>
<body data-sessions="{sessions_url}">
<h1>Watch an ad, get a reward</h1>
<p>Standing in for a Telegram Mini App: the gateway issues a ymid to the user Telegram's
initData proves, and pays the ad's postback only for that ymid, once.</p>
<button id="get-ymid" type="button">Get a ymid</button>
<button id="show-ad" type="button" disabled>Show the ad</button>
<dl>
  <dt>ymid</dt><dd id="ymid">none yet</dd>
  <dt>postback</dt><dd id="postback">none sent</dd>
  <dt>state</dt><dd id="state">no ymid yet</dd>
  <dt>event</dt><dd id="event-type"></dd>
</dl>
<script>
"use strict";
const SESSIONS = document.body.dataset.sessions;
const show = (id, text) => { document.getElementById(id).textContent = text; };
let statusUrl = null;
let watching = 0;  // only the latest wait on the status updates the page

async function initData() {
  const telegram = window.Telegram?.WebApp?.initData;
  if (telegram) return telegram;
  // outside Telegram, the demo app signs initData for its demo user
  const answer = await fetch("/miniapp/init-data");
  return (await answer.json()).init_data;
}

async function getYmid() {
  show("state", "asking the gateway for a ymid");
  const answer = await fetch(SESSIONS, {
    method: "POST",
    headers: {"Content-Type": "application/json"},
    body: JSON.stringify({init_data: await initData()}),
  });
  const body = await answer.json();
  if (!answer.ok) {
    show("state", `No ymid: ${body.error} (${body.detail})`);
    return;
  }
  statusUrl = new URL(body.status_url, SESSIONS).href;
  show("ymid", body.ymid);
  show("state", "ready: show the ad");
  document.getElementById("show-ad").disabled = false;
}

async function showAd() {
  const ymid = document.getElementById("ymid").textContent;
  show("postback", "sending");
  show("state", "showing the ad");
  const answer = await fetch("/miniapp/show-ad", {
    method: "POST",
    headers: {"Content-Type": "application/json"},
    body: JSON.stringify({ymid}),
  });
  const body = await answer.json();
  show("postback", body.error ?? `the gateway answered ${body.status} ${body.outcome}`);
  await awaitDecision(++watching);
}

async function awaitDecision(mine) {
  for (;;) {
    const answer = await fetch(`${statusUrl}?wait=10s`);
    const status = await answer.json();
    if (mine !== watching) return;
    if (!answer.ok) {
      show("state", `No status: ${status.error} (${status.detail})`);
      return;
    }
    if (status.state === "pending") {
      show("state", "waiting for the reward");
      continue;
    }
    if (status.state === "rewarded") {
      show("state", "Reward granted!");
      show("event-type", status.event_type ?? "");
    } else {
      show("state", `${status.state === "refused" ? "Refused" : "Expired"}: ${
        status.reason ?? "no postback came in time"}`);
      show("event-type", status.event_type ?? "");
    }
    return;
  }
}

const failed = (error) => show("state", `The request failed: ${error}`);
document.getElementById("get-ymid").addEventListener("click", () => getYmid().catch(failed));
document.getElementById("show-ad").addEventListener("click", () => showAd().catch(failed));
</script>
</body>
</html>
"""


def miniapp_from(args: argparse.Namespace, parser: argparse.ArgumentParser) -> MiniAppDemo | None:
    """The Mini App demo's settings: the URL from the command line, the bot's token and the
    route's key from the environment (not the command line, where `ps` shows them)."""
    if args.gateway_url is None:
        return None
    missing = [name for name in MINIAPP_ENVIRONMENT if not os.environ.get(name)]
    if missing:
        parser.error(f"--gateway-url needs {' and '.join(missing)} in the environment")
    return MiniAppDemo(
        gateway_url=args.gateway_url.rstrip("/"),
        bot_token=os.environ["TELEGRAM_BOT_TOKEN"],
        monetag_secret=os.environ["MONETAG_SECRET"],
    )


def main() -> None:
    parser = argparse.ArgumentParser(description="demo app behind the gateway")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=3000)
    parser.add_argument(
        "--gateway-url",
        help="the gateway's public URL: serve the Mini App demo at /miniapp (reads "
        "TELEGRAM_BOT_TOKEN and MONETAG_SECRET from the environment)",
    )
    args = parser.parse_args()
    miniapp = miniapp_from(args, parser)
    logging.basicConfig(level=logging.INFO, format="demo app: %(message)s")
    web.run_app(create_demo_app(miniapp), host=args.host, port=args.port, print=None)


if __name__ == "__main__":
    main()
