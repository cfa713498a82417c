"""Reload inside one process: the new config takes over, nothing accepted is cut or forgotten."""

from __future__ import annotations

import asyncio

from aiohttp import web

from gateway.app import create_admin_app
from gateway.config import parse_config
from tests.conftest import SECRET, route_yaml
from tests.test_pipeline import CLICK, get


def config_of(yaml_text: str):
    return parse_config(yaml_text, {"MONETAG_SECRET": SECRET})


async def test_request_in_flight_finishes_on_the_old_config(start_upstream, start_gateway, http):
    slow = await start_upstream(default=("sleep", 0.4), body="old app")
    fast = await start_upstream(body="new app")
    gateway = await start_gateway(route_yaml([slow.url]))
    old_gateway = gateway.runtime.gateway
    in_flight = asyncio.create_task(get(http, gateway.postback_url(), CLICK))
    await asyncio.sleep(0.1)
    await gateway.runtime.apply(config_of(route_yaml([fast.url])))
    assert await in_flight == (200, "forwarded", "old app")
    other = {**CLICK, "uid": "user-2"}
    assert await get(http, gateway.postback_url(), other) == (200, "forwarded", "new app")
    await asyncio.sleep(0.2)
    assert old_gateway._client.closed  # the old pool is closed once its requests are done
    assert not gateway.runtime.gateway._client.closed


async def test_dedup_memory_survives_reload(start_upstream, start_gateway, http):
    upstream = await start_upstream()
    gateway = await start_gateway(route_yaml([upstream.url]))
    assert (await get(http, gateway.postback_url(), CLICK))[1] == "forwarded"
    changed = route_yaml([upstream.url], extra="    dedup: {ttl: 1h, max_entries: 10}\n")
    await gateway.runtime.apply(config_of(changed))
    assert (await get(http, gateway.postback_url(), CLICK))[1] == "duplicate"
    assert len(upstream.received) == 1


async def test_duplicate_arriving_during_reload_waits_for_the_first(
    start_upstream, start_gateway, http
):
    upstream = await start_upstream(default=("sleep", 0.3))
    gateway = await start_gateway(route_yaml([upstream.url]))
    first = asyncio.create_task(get(http, gateway.postback_url(), CLICK))
    await asyncio.sleep(0.1)
    await gateway.runtime.apply(config_of(route_yaml([upstream.url])))
    second = await get(http, gateway.postback_url(), CLICK)
    assert (await first)[1] == "forwarded"
    assert second[1] == "duplicate"
    assert len(upstream.received) == 1


async def test_removed_route_drops_its_memory_and_path(start_upstream, start_gateway, http):
    upstream = await start_upstream()
    gateway = await start_gateway(route_yaml([upstream.url]))
    renamed = (
        route_yaml([upstream.url])
        .replace("  tapper:\n", "  runner:\n")
        .replace("/postback/tapper", "/postback/runner")
    )
    await gateway.runtime.apply(config_of(renamed))
    assert set(gateway.runtime.dedup) == {"runner"}
    assert (await get(http, gateway.postback_url(), CLICK))[:2] == (404, "not_found")
    runner = gateway.url + "/postback/runner"
    assert (await get(http, runner, CLICK))[:2] == (200, "forwarded")


async def test_readyz_reports_the_live_checksum(start_upstream, start_gateway, http):
    upstream = await start_upstream()
    gateway = await start_gateway(route_yaml([upstream.url]))
    runner = web.AppRunner(create_admin_app(gateway.runtime))
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    readyz = f"http://127.0.0.1:{runner.addresses[0][1]}/readyz"
    try:
        new_config = config_of(route_yaml([upstream.url], extra="    drop_unknown: true\n"))
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
