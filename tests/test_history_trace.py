"""The reward trace's verdict, for each way a user's reward can go, on both stores."""

from __future__ import annotations

import re
import time
from pathlib import Path

import aiohttp

from gateway.history.trace import user_trace
from tests.conftest import GatewayFactory, RunningGateway
from tests.support.gatewayconfig import gateway_config, route, upstream
from tests.support.processes import SECRET
from tests.support.upstream import RecordingUpstream
from tests.support.waiting import eventually_async
from tests.test_history import USER, history_of
from tests.test_pipeline import get

WEEK = 7 * 86400
CLOCK = r"\d\d:\d\d:\d\d"


def config(app: RecordingUpstream, store: str | Path) -> str:
    app_route = upstream(app.url, timeout="500ms", retries=0)
    queue = {"retry_base": "20ms", "retry_cap": "50ms", "max_attempts": 3}
    return gateway_config(
        routes={
            "tapper": route([app_route]),
            "queued": route([app_route], delivery="queued", queue=queue),
        },
        store=store,
    )


async def verdict(gateway: RunningGateway, **user: str) -> str:
    history = history_of(gateway)
    await history.flush()
    found = await user_trace(history.store, since=time.time() - WEEK, window="7 days", **user)
    return found.verdict


async def test_no_postback_for_the_user(start_upstream, start_gateway: GatewayFactory, store_at):
    gateway = await start_gateway(config(start_upstream(), store_at))
    assert await verdict(gateway, telegram_id="1") == (
        "no postback arrived for this user in the last 7 days"
    )


async def test_a_user_id_sent_as_the_ymid_is_pointed_to(
    start_upstream, start_gateway: GatewayFactory, http: aiohttp.ClientSession, store_at
):
    """An app that passes the user's Telegram id as ymid (Monetag's samples reward_user(ymid))
    sends no telegram_id: a trace by telegram_id found nothing and said no postback arrived,
    which the newcomer trial read as "Monetag sent nothing"."""
    gateway = await start_gateway(config(start_upstream(), store_at))
    await get(http, gateway.postback_url(), {"uid": "111", "event": "click", "token": SECRET})
    assert await verdict(gateway, telegram_id="111") == (
        "no postback with this telegram_id arrived in the last 7 days, but some carry it as "
        "their ymid (an app that passes the user's id as ymid): trace the ymid instead"
    )
    assert (await verdict(gateway, ymid="111")).startswith("rewarded once at ")
    assert await verdict(gateway, telegram_id="112") == (
        "no postback arrived for this user in the last 7 days"
    )


async def test_the_same_event_paid_again_after_the_dedup_window_is_counted(
    start_upstream, start_gateway: GatewayFactory, http: aiohttp.ClientSession, store_at
):
    """With the user's id as ymid and a short dedup.ttl, a user's next click is the same event
    and is paid again: the trace said "rewarded once" of a user the app paid three times."""
    app = start_upstream()
    short = route([upstream(app.url, retries=0)], dedup={"ttl": "200ms"})
    gateway = await start_gateway(gateway_config(routes={"tapper": short}, store=store_at))
    click = {"uid": "111", "event": "click", "zone": "1", "token": SECRET}
    assert (await get(http, gateway.postback_url(), click))[1] == "forwarded"

    async def paid_again() -> bool:
        return (await get(http, gateway.postback_url(), click))[1] == "forwarded"

    await eventually_async(paid_again, 10)  # duplicates until the window has passed
    said = await verdict(gateway, ymid="111")
    assert re.match(
        rf"rewarded 2 times \(click, zone 1\), the first at {CLOCK}, the last at {CLOCK} "
        r"\(each after the dedup window of the one before\)",
        said,
    ), said
    assert len(app.received) == 2


async def test_rewarded_once_and_later_copies_were_duplicates(
    start_upstream, start_gateway: GatewayFactory, http: aiohttp.ClientSession, store_at
):
    gateway = await start_gateway(config(start_upstream(), store_at))
    for _ in range(3):
        await get(http, gateway.postback_url(), {**USER, "zone": "8790478"})
    said = await verdict(gateway, telegram_id="123456")
    assert re.fullmatch(
        rf"rewarded once at {CLOCK} \(click, zone 8790478\); 2 later copies were duplicates", said
    ), said
    assert await verdict(gateway, ymid="user-1") == said


async def test_refused_with_a_wrong_key(
    start_upstream, start_gateway: GatewayFactory, http: aiohttp.ClientSession, store_at
):
    gateway = await start_gateway(config(start_upstream(), store_at))
    await get(http, gateway.postback_url(), {**USER, "token": "rotated-key-" * 3})
    said = await verdict(gateway, telegram_id="123456")
    assert said.startswith("refused: secret_wrong (the key may have been rotated"), said


async def test_queued_and_dead_lettered_after_the_app_failed(
    start_upstream, start_gateway: GatewayFactory, http: aiohttp.ClientSession, store_at
):
    gateway = await start_gateway(config(start_upstream(default=500), store_at))
    await get(http, gateway.postback_url("/postback/queued"), USER)
    history = history_of(gateway)

    async def dead() -> str | None:
        said = await verdict(gateway, telegram_id="123456")
        return said if "dead letter" in said else None

    said = await eventually_async(dead)
    assert re.fullmatch(
        rf"queued at {CLOCK} \(click, zone 42\); the app answered 500 three times; "
        rf"dead letter since {CLOCK} \(re-drive it: queue retry\)",
        said,
    ), said
    assert history.store is not None


async def test_the_app_failed_a_forwarded_postback(
    start_upstream, start_gateway: GatewayFactory, http: aiohttp.ClientSession, store_at
):
    gateway = await start_gateway(config(start_upstream(default=500), store_at))
    await get(http, gateway.postback_url(), USER)
    said = await verdict(gateway, telegram_id="123456")
    assert re.fullmatch(
        rf"forwarded at {CLOCK} \(click, zone 42\); the app answered 500 once: not rewarded "
        r"\(Monetag may send it again\)",
        said,
    ), said


async def test_the_latest_event_leads_and_earlier_ones_are_counted(
    start_upstream, start_gateway: GatewayFactory, http: aiohttp.ClientSession, store_at
):
    gateway = await start_gateway(config(start_upstream(), store_at))
    await get(http, gateway.postback_url(), {**USER, "event": "impression"})
    await get(http, gateway.postback_url(), {**USER, "uid": "later", "event": "view"})
    said = await verdict(gateway, telegram_id="123456")
    assert said.startswith("refused: invalid_fields"), said
    assert said.endswith("(1 earlier event: 1 rewarded, 0 not)"), said


async def test_a_click_and_the_impression_after_it_are_each_said_by_their_type(
    start_upstream, start_gateway: GatewayFactory, http: aiohttp.ClientSession, store_at
):
    """One ad view (one ymid): the click the app rewarded, then its impression, which the
    app also took. The headline says both, the click first as it came first: the latest
    postback's event alone would read as if the impression were the reward."""
    gateway = await start_gateway(config(start_upstream(), store_at))
    await get(http, gateway.postback_url(), {**USER, "uid": "earlier"})
    await get(http, gateway.postback_url(), USER)
    await get(http, gateway.postback_url(), {**USER, "event": "impression"})
    said = await verdict(gateway, telegram_id="123456")
    assert re.fullmatch(
        rf"click: rewarded once at {CLOCK} \(zone 42\); impression: rewarded once at {CLOCK} "
        r"\(zone 42\) \(1 earlier event: 1 rewarded, 0 not\)",
        said,
    ), said
    assert await verdict(gateway, ymid="user-1") == said.removesuffix(
        " (1 earlier event: 1 rewarded, 0 not)"
    )
