"""Routing rules over real sockets: match, drop_unknown, static_params, template, log_only."""

from __future__ import annotations

import asyncio

import pytest
from prometheus_client import generate_latest

from tests.conftest import SECRET, access_lines
from tests.support.gatewayconfig import gateway_config, upstream
from tests.support.upstream import Answer
from tests.test_pipeline import CLICK, get


def sample(gateway, name: str, **labels: str) -> float:
    """One sample's value from the gateway's metrics registry (0 if absent)."""
    value = gateway.runtime.metrics.registry.get_sample_value(name, labels)
    return 0.0 if value is None else value


async def test_match_forwards_only_paid_events(start_upstream, start_gateway, http):
    app = start_upstream()
    match = {"reward_event_type": "valued", "event_type": ["click", "impression"]}
    gateway = await start_gateway(gateway_config(app.url, match=match))
    paid = {**CLICK, "reward_event_type": "VALUED"}
    unpaid = {**CLICK, "uid": "user-2", "reward_event_type": "not_valued"}
    unsaid = {**CLICK, "uid": "user-3"}
    assert (await get(http, gateway.postback_url(), paid))[:2] == (200, "forwarded")
    assert await get(http, gateway.postback_url(), unpaid) == (
        200,
        "filtered",
        '{"outcome": "filtered"}',
    )
    assert (await get(http, gateway.postback_url(), unsaid))[:2] == (200, "filtered")
    assert [r.query["ymid"] for r in app.received] == ["user-1"]
    counted = sample(gateway, "gateway_rejections_total", route="tapper", reason="filtered")
    assert counted == 2


async def test_filtered_event_is_not_remembered(start_upstream, start_gateway, http):
    """A filtered postback is not delivered, so it must not make a later one a duplicate."""
    app = start_upstream()
    config = gateway_config(app.url, match={"zone_id": 42}, dedup={"key": ["ymid", "event_type"]})
    gateway = await start_gateway(config)
    assert (await get(http, gateway.postback_url(), {**CLICK, "zone": "7"}))[1] == "filtered"
    assert (await get(http, gateway.postback_url(), CLICK))[1] == "forwarded"


async def test_drop_unknown_forwards_canonical_fields_only(start_upstream, start_gateway, http):
    app = start_upstream()
    gateway = await start_gateway(gateway_config(app.url, drop_unknown=True))
    params = {**CLICK, "utm": "x", "callback": "http://evil.example/"}
    assert (await get(http, gateway.postback_url(), params))[:2] == (200, "forwarded")
    assert list(app.received[0].query) == ["ymid", "event_type", "zone_id"]


async def test_static_params_are_added_and_cannot_be_overridden(
    start_upstream, start_gateway, http, capsys
):
    app = start_upstream()
    config = gateway_config(upstream(app.url + "/cb", static_params={"api_key": "app-key-31337"}))
    gateway = await start_gateway(config)
    params = {**CLICK, "api_key": "attacker"}
    assert (await get(http, gateway.postback_url(), params))[:2] == (200, "forwarded")
    assert app.received[0].query.getall("api_key") == ["app-key-31337"]
    logged = capsys.readouterr().out
    assert "gateway.access" in logged
    assert "app-key-31337" not in logged
    assert "app-key-31337" not in generate_latest(gateway.runtime.metrics.registry).decode()


async def test_template_derives_the_alias_map(start_upstream, start_gateway, http):
    app = start_upstream()
    template = (
        "https://gw.example.com/postback/tapper?u={ymid}&e={event_type}"
        "&z={zone_id}&token=${MONETAG_SECRET}"
    )
    gateway = await start_gateway(gateway_config(app.url, aliases=None, template=template))
    params = {"u": "player-9", "e": "Impression", "z": "5", "token": SECRET}
    assert (await get(http, gateway.postback_url(), params))[:2] == (200, "forwarded")
    assert dict(app.received[0].query) == {
        "ymid": "player-9",
        "event_type": "impression",
        "zone_id": "5",
    }


async def test_log_only_allowlist_lets_in_and_counts(start_upstream, start_gateway, http, capsys):
    app = start_upstream()
    config = gateway_config(app.url, allow_ips=["203.0.113.0/24"], allow_ips_mode="log_only")
    gateway = await start_gateway(config)
    assert (await get(http, gateway.postback_url(), CLICK))[:2] == (200, "forwarded")
    assert sample(gateway, "gateway_allowlist_log_only_total", route="tapper") == 1
    line = access_lines(capsys)[-1]
    assert "log_only" in line["detail"]
    # the secret is still enforced
    wrong = {**CLICK, "uid": "user-2", "token": "nope"}
    assert (await get(http, gateway.postback_url(), wrong))[:2] == (403, "rejected")


@pytest.mark.slow
async def test_valued_revenue_is_summed_per_zone_once_delivered(
    start_upstream, start_gateway, http
):
    app = start_upstream(script=[503, 503, 503])
    gateway = await start_gateway(gateway_config(app.url))
    valued = {**CLICK, "reward_event_type": "valued", "estimated_price": "0.0125"}
    assert (await get(http, gateway.postback_url(), valued))[1] == "upstream_error"
    assert (
        sample(gateway, "gateway_valued_estimated_price_usd_total", route="tapper", zone_id="42")
        == 0
    )
    assert (await get(http, gateway.postback_url(), valued))[1] == "forwarded"
    assert (await get(http, gateway.postback_url(), valued))[1] == "duplicate"
    unpaid = {**valued, "uid": "user-2", "reward_event_type": "not_valued"}
    assert (await get(http, gateway.postback_url(), unpaid))[1] == "forwarded"
    total = sample(
        gateway, "gateway_valued_estimated_price_usd_total", route="tapper", zone_id="42"
    )
    assert total == 0.0125


async def test_dedup_evictions_before_ttl_are_counted(start_upstream, start_gateway, http):
    app = start_upstream()
    gateway = await start_gateway(gateway_config(app.url, dedup={"max_entries": 2}))
    for number in range(5):
        await get(http, gateway.postback_url(), {**CLICK, "uid": f"user-{number}"})
    assert sample(gateway, "gateway_dedup_evictions_total", route="tapper") == 3
    assert sample(gateway, "gateway_dedup_entries", route="tapper") == 2
    # the evicted first event is no longer recognised: exactly what the metric warns about
    assert (await get(http, gateway.postback_url(), {**CLICK, "uid": "user-0"}))[1] == "forwarded"


@pytest.mark.slow
async def test_overload_answers_503_with_retry_after(start_upstream, start_gateway, http):
    app = start_upstream(default=Answer(delay=0.3))
    gateway = await start_gateway(gateway_config(app.url, server={"max_in_flight": 2}))
    answers = []

    async def send(number: int) -> None:
        params = {**CLICK, "uid": f"user-{number}"}
        async with http.get(gateway.postback_url(), params=params) as response:
            answers.append((response.status, response.headers.get("Retry-After")))

    await asyncio.gather(*(send(number) for number in range(5)))
    assert sorted(answers, key=str) == [(200, None)] * 2 + [(503, "1")] * 3
    assert len(app.received) == 2


async def test_a_valid_key_from_outside_the_allowlist_is_counted_apart(
    start_upstream, start_gateway, sender
):
    """Monetag's addresses changed (the key is right, the address unknown): the one refusal
    that loses rewards, counted on its own; a stranger's wrong key from there is not."""
    app = start_upstream()
    gateway = await start_gateway(gateway_config(app.url, allow_ips=["127.0.0.1/32"]))
    outside = sender("127.0.0.5")
    assert (await get(outside, gateway.postback_url(), CLICK))[:2] == (403, "rejected")
    wrong = {**CLICK, "token": "nope"}
    assert (await get(outside, gateway.postback_url(), wrong))[:2] == (403, "rejected")
    assert (await get(sender("127.0.0.1"), gateway.postback_url(), CLICK))[1] == "forwarded"
    name = "gateway_allowlist_refused_valid_key_total"
    assert sample(gateway, name, route="tapper", mode="enforce") == 1
    assert sample(gateway, name, route="tapper", mode="log_only") == 0
    assert app.count() == 1  # only the allowed one reached the app


async def test_log_only_counts_the_valid_keys_enforcing_would_refuse(
    start_upstream, start_gateway, sender
):
    app = start_upstream()
    config = gateway_config(app.url, allow_ips=["127.0.0.1/32"], allow_ips_mode="log_only")
    gateway = await start_gateway(config)
    outside = sender("127.0.0.6")
    assert (await get(outside, gateway.postback_url(), CLICK))[1] == "forwarded"
    wrong = {**CLICK, "uid": "user-2", "token": "nope"}
    assert (await get(outside, gateway.postback_url(), wrong))[:2] == (403, "rejected")
    name = "gateway_allowlist_refused_valid_key_total"
    assert sample(gateway, name, route="tapper", mode="log_only") == 1
    assert sample(gateway, name, route="tapper", mode="enforce") == 0
    assert sample(gateway, "gateway_allowlist_log_only_total", route="tapper") == 2


async def test_accepted_valued_postbacks_are_counted_per_route(start_upstream, start_gateway, http):
    """What the silence alert watches: valued postbacks the app took, not duplicates."""
    app = start_upstream()
    gateway = await start_gateway(gateway_config(app.url))
    valued = {**CLICK, "reward_event_type": "valued", "estimated_price": "0"}
    assert (await get(http, gateway.postback_url(), valued))[1] == "forwarded"
    assert (await get(http, gateway.postback_url(), valued))[1] == "duplicate"
    unpaid = {**CLICK, "uid": "user-2", "reward_event_type": "not_valued"}
    assert (await get(http, gateway.postback_url(), unpaid))[1] == "forwarded"
    assert sample(gateway, "gateway_valued_postbacks_total", route="tapper") == 1
