"""Reload inside one process: the new config takes over, nothing accepted is cut or forgotten."""

from __future__ import annotations

import asyncio

from aiohttp import web

from gateway.config import parse_config
from gateway.serving.app import create_admin_app
from tests.conftest import SECRET
from tests.gatewayconfig import gateway_config, route
from tests.test_pipeline import CLICK, get
from tests.upstream import Answer
from tests.waiting import eventually_async


def config_of(yaml_text: str):
    return parse_config(yaml_text, {"MONETAG_SECRET": SECRET})


async def test_request_in_flight_finishes_on_the_old_config(start_upstream, start_gateway, http):
    slow = start_upstream(default=Answer(delay=0.4), body="old app")
    fast = start_upstream(body="new app")
    gateway = await start_gateway(gateway_config(slow.url))
    old_gateway = gateway.runtime.gateway
    in_flight = asyncio.create_task(get(http, gateway.postback_url(), CLICK))
    await eventually_async(lambda: slow.received)  # the request is at the old config's upstream
    await gateway.runtime.apply(config_of(gateway_config(fast.url)))
    assert await in_flight == (200, "forwarded", "old app")
    other = {**CLICK, "uid": "user-2"}
    assert await get(http, gateway.postback_url(), other) == (200, "forwarded", "new app")
    # the old pool is closed once its requests are done
    await eventually_async(lambda: old_gateway._client.closed)
    assert not gateway.runtime.gateway._client.closed


async def test_dedup_memory_survives_reload(start_upstream, start_gateway, http):
    upstream = start_upstream()
    gateway = await start_gateway(gateway_config(upstream.url))
    assert (await get(http, gateway.postback_url(), CLICK))[1] == "forwarded"
    changed = gateway_config(upstream.url, dedup={"ttl": "1h", "max_entries": 10})
    await gateway.runtime.apply(config_of(changed))
    assert (await get(http, gateway.postback_url(), CLICK))[1] == "duplicate"
    assert len(upstream.received) == 1


async def test_duplicate_arriving_during_reload_waits_for_the_first(
    start_upstream, start_gateway, http
):
    upstream = start_upstream(default=Answer(delay=0.3))
    gateway = await start_gateway(gateway_config(upstream.url))
    first = asyncio.create_task(get(http, gateway.postback_url(), CLICK))
    await eventually_async(lambda: upstream.received)  # the first is being forwarded
    await gateway.runtime.apply(config_of(gateway_config(upstream.url)))
    second = await get(http, gateway.postback_url(), CLICK)
    assert (await first)[1] == "forwarded"
    assert second[1] == "duplicate"
    assert len(upstream.received) == 1


async def test_removed_route_drops_its_memory_and_path(start_upstream, start_gateway, http):
    upstream = start_upstream()
    gateway = await start_gateway(gateway_config(upstream.url))
    renamed = gateway_config(routes={"runner": route([upstream.url])})
    await gateway.runtime.apply(config_of(renamed))
    assert set(gateway.runtime.dedup) == {"runner"}
    assert (await get(http, gateway.postback_url(), CLICK))[:2] == (404, "not_found")
    runner = gateway.url + "/postback/runner"
    assert (await get(http, runner, CLICK))[:2] == (200, "forwarded")


async def test_readyz_reports_the_live_checksum(start_upstream, start_gateway, http):
    upstream = start_upstream()
    gateway = await start_gateway(gateway_config(upstream.url))
    runner = web.AppRunner(create_admin_app(gateway.runtime))
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    readyz = f"http://127.0.0.1:{runner.addresses[0][1]}/readyz"
    try:
        new_config = config_of(gateway_config(upstream.url, drop_unknown=True))
        assert new_config.checksum != gateway.runtime.config.checksum
        await gateway.runtime.apply(new_config)
        async with http.get(readyz) as response:
            assert (response.status, await response.json()) == (
                200, {"status": "ready", "config_checksum": new_config.checksum}
            )  # fmt: skip
        gateway.runtime.draining = True
        async with http.get(readyz) as response:
            assert response.status == 503
            assert (await response.json())["status"] == "draining"
    finally:
        await runner.cleanup()
