"""Reload inside one process: the new config takes over, nothing accepted is cut or forgotten."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from aiohttp import web

from gateway.config import parse_config
from gateway.deadline import Deadline
from gateway.serving.app import create_admin_app
from tests.conftest import SECRET
from tests.support.gatewayconfig import gateway_config, route
from tests.support.upstream import Answer
from tests.support.waiting import eventually_async
from tests.test_pipeline import CLICK, get


def config_of(yaml_text: str):
    return parse_config(yaml_text, {"MONETAG_SECRET": SECRET})


@pytest.mark.process
@pytest.mark.slow
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


@pytest.mark.slow
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
                200,
                {"status": "ready", "config_checksum": new_config.checksum},
            )
        gateway.runtime.draining = True
        async with http.get(readyz) as response:
            assert response.status == 503
            assert (await response.json())["status"] == "draining"
    finally:
        await runner.cleanup()


# -- the event's identity across config edits (docs/request-path.md: what starts a new window) --


def tapper_at(
    url: str, name: str = "tapper", path: str = "/postback/tapper", **settings: Any
) -> str:
    """The usual route under `name`, at /postback/tapper unless `path` says otherwise;
    `settings` are its other keys (dedup=, store= goes to the config)."""
    store = settings.pop("store", None)
    return gateway_config(routes={name: route([url], path=path, **settings)}, store=store)


EDITS_THAT_KEEP_THE_EVENT = [
    pytest.param({"dedup": {"key": ["event_type", "ymid", "zone_id"]}}, id="dedup-key-reordered"),
    pytest.param({"name": "tapper-prod"}, id="route-renamed"),
    pytest.param({"dedup": {"ttl": "2h", "max_entries": 500}}, id="ttl-and-size"),
]


@pytest.mark.parametrize("edit", EDITS_THAT_KEEP_THE_EVENT)
async def test_an_edit_that_keeps_the_fields_keeps_the_event_and_its_key(
    edit, start_upstream, start_gateway, http, caplog
):
    app = start_upstream()
    gateway = await start_gateway(tapper_at(app.url))
    assert (await get(http, gateway.postback_url(), CLICK))[1] == "forwarded"

    await gateway.runtime.apply(config_of(tapper_at(app.url, **edit)))

    assert (await get(http, gateway.postback_url(), CLICK))[1] == "duplicate"
    assert len(app.received) == 1
    assert "dedup identity changed" not in caplog.text


@pytest.mark.parametrize("edit", EDITS_THAT_KEEP_THE_EVENT)
async def test_an_edit_that_keeps_the_fields_keeps_the_key_in_the_store_across_a_restart(
    edit, start_upstream, start_gateway, http, db_path
):
    app = start_upstream()
    before = await start_gateway(tapper_at(app.url, store=db_path))
    assert (await get(http, before.postback_url(), CLICK))[1] == "forwarded"
    await before.runner.cleanup()
    await before.runtime.close(Deadline(1))  # a restart: the memory is gone, the store remains

    after = await start_gateway(tapper_at(app.url, store=db_path, **edit))

    assert (await get(http, after.postback_url(), CLICK))[1] == "duplicate"
    assert len(app.received) == 1


@pytest.mark.parametrize(
    ("edit", "change"),
    [
        pytest.param({"dedup": {"key": ["ymid", "event_type"]}}, "dedup.key", id="a-field-less"),
        pytest.param({"dedup": {"scope": "tapper-v2"}}, "scope", id="scope-changed"),
    ],
)
async def test_an_edit_that_changes_the_identity_starts_a_new_window_and_says_so(
    edit, change, start_upstream, start_gateway, http, caplog
):
    app = start_upstream()
    gateway = await start_gateway(tapper_at(app.url))
    assert (await get(http, gateway.postback_url(), CLICK))[1] == "forwarded"

    await gateway.runtime.apply(config_of(tapper_at(app.url, **edit)))

    assert (await get(http, gateway.postback_url(), CLICK))[1] == "forwarded"
    (warning,) = [r for r in caplog.records if "dedup identity changed" in r.getMessage()]
    assert warning.route == "tapper"  # type: ignore[attr-defined]
    assert change in warning.change  # type: ignore[attr-defined]
    assert len({received.key for received in app.received}) == 2  # a new idempotency key


async def test_a_route_removed_and_put_back_still_knows_its_events(
    start_upstream, start_gateway, http
):
    app = start_upstream()
    gateway = await start_gateway(tapper_at(app.url))
    assert (await get(http, gateway.postback_url(), CLICK))[1] == "forwarded"

    await gateway.runtime.apply(config_of(tapper_at(app.url, name="other", path="/elsewhere")))
    await gateway.runtime.apply(config_of(tapper_at(app.url)))

    assert (await get(http, gateway.postback_url(), CLICK))[1] == "duplicate"
    assert len(app.received) == 1


@pytest.mark.process
@pytest.mark.slow
async def test_a_twin_after_two_reloads_waits_for_the_postback_in_flight(
    start_upstream, start_gateway, http
):
    app = start_upstream(default=Answer(delay=0.5))
    gateway = await start_gateway(tapper_at(app.url))
    first = asyncio.create_task(get(http, gateway.postback_url(), CLICK))
    await eventually_async(lambda: app.received)  # A is at the app
    await gateway.runtime.apply(config_of(tapper_at(app.url, name="other", path="/elsewhere")))
    await gateway.runtime.apply(config_of(tapper_at(app.url)))

    twin = await get(http, gateway.postback_url(), CLICK)  # B, while A is still in flight

    assert (await first)[1] == "forwarded"
    assert twin[1] == "duplicate"
    assert len(app.received) == 1


async def test_gateway_ready_says_what_readyz_says(start_upstream, start_gateway, http):
    """The alert on readiness reads `gateway_ready`; it follows /readyz, draining included."""
    gateway = await start_gateway(gateway_config(start_upstream().url))
    runner = web.AppRunner(create_admin_app(gateway.runtime))
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    admin = f"http://127.0.0.1:{runner.addresses[0][1]}"
    registry = gateway.runtime.metrics.registry
    try:
        for draining, status, ready in ((False, 200, 1.0), (True, 503, 0.0)):
            gateway.runtime.draining = draining
            async with http.get(f"{admin}/readyz") as response:
                assert response.status == status
            assert registry.get_sample_value("gateway_ready") == ready
    finally:
        gateway.runtime.draining = False
        await runner.cleanup()
