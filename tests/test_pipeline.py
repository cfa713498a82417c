"""The whole request path over real sockets: a real gateway in front of real upstream servers."""

from __future__ import annotations

import asyncio
import json
import socket
import time
from collections.abc import AsyncIterator

import aiohttp
import pytest
from aiohttp import web

from gateway.config import parse_config
from gateway.deadline import Deadline
from gateway.demo_app import GRANTED, create_demo_app
from gateway.metrics import Metrics
from gateway.runtime import Runtime
from gateway.serving.app import public_runner
from tests.conftest import SECRET
from tests.support.gatewayconfig import gateway_config, upstream
from tests.support.upstream import DROP, Answer
from tests.support.waiting import eventually_async

CLICK = {"uid": "user-1", "event": "click", "zone": "42", "token": SECRET}


async def get(
    http: aiohttp.ClientSession,
    url: str,
    params: dict[str, str] | list[tuple[str, str]],
    **kwargs: object,
) -> tuple[int, str, str]:
    """(status, outcome header, body) of one GET."""
    async with http.get(url, params=params, **kwargs) as response:  # type: ignore[arg-type]
        return response.status, response.headers["X-Gateway-Outcome"], await response.text()


# -- 1. route -------------------------------------------------------------------------------


@pytest.mark.slow
async def test_unknown_path_is_404_not_found(start_upstream, start_gateway, http):
    upstream = start_upstream()
    gateway = await start_gateway(gateway_config(upstream.url))
    for path in ("/postback/other", "/postback/tapper/", "/"):
        assert await get(http, gateway.url + path, CLICK) == (
            404,
            "not_found",
            '{"outcome": "not_found", "error": "unknown_path"}',
        )
    assert upstream.received == []


@pytest.mark.parametrize("method", ["POST", "HEAD", "PUT", "DELETE", "OPTIONS"])
async def test_methods_other_than_get_are_405_and_never_forwarded(
    method, start_upstream, start_gateway, http
):
    upstream = start_upstream()
    gateway = await start_gateway(gateway_config(upstream.url))
    async with http.request(method, gateway.postback_url(), params=CLICK) as response:
        assert response.status == 405
        assert response.headers["X-Gateway-Outcome"] == "rejected"
        assert response.headers["Allow"] == "GET"
    assert upstream.received == []


# -- 2 and 3. client address and allowlist ----------------------------------------------------


async def test_x_forwarded_for_from_untrusted_peer_is_ignored(start_upstream, start_gateway, http):
    upstream = start_upstream()
    config = gateway_config(upstream.url, allow_ips=["203.0.113.7"])
    gateway = await start_gateway(config)
    spoofed = {"X-Forwarded-For": "203.0.113.7"}
    status, outcome, body = await get(http, gateway.postback_url(), CLICK, headers=spoofed)
    assert (status, outcome, json.loads(body)["error"]) == (403, "rejected", "forbidden")
    assert upstream.received == []


TRUSTED_LB = {"trusted_proxies": ["127.0.0.0/8", "10.0.0.0/8"]}
RANGES = ["198.51.100.10-198.51.100.20", "2001:db8::/48", "203.0.113.0/24"]


@pytest.mark.parametrize(
    ("forwarded_for", "expected_status"),
    [
        pytest.param(["198.51.100.10"], 200, id="range-first"),
        pytest.param(["198.51.100.20"], 200, id="range-last"),
        pytest.param(["198.51.100.21"], 403, id="just-past-range"),
        pytest.param(["2001:db8:0:ffff::1"], 200, id="ipv6-cidr"),
        pytest.param(["2001:db9::1"], 403, id="ipv6-outside"),
        pytest.param(["203.0.113.9, 10.1.1.1"], 200, id="trusted-hop-skipped"),
        pytest.param(["203.0.113.9, 8.8.8.8"], 403, id="right-most-untrusted-wins"),
        pytest.param(["8.8.8.8, 203.0.113.9"], 200, id="left-most-spoof-not-believed"),
        pytest.param(["8.8.8.8", "203.0.113.9, 10.0.0.1"], 200, id="several-lines-joined"),
        pytest.param(["203.0.113.9", "8.8.8.8"], 403, id="last-line-is-right-most"),
        pytest.param(["::ffff:203.0.113.9"], 200, id="mapped-ipv6-is-ipv4"),
        pytest.param(["203.0.113.9:4711"], 200, id="port-after-ipv4-is-dropped"),
        pytest.param(["[2001:db8::1]:443"], 200, id="port-after-bracketed-ipv6-is-dropped"),
        pytest.param(["203.0.113.9:"], 403, id="empty-port-is-garbage"),
        pytest.param(["203.000.113.9"], 403, id="leading-zero-octet"),
        pytest.param(["unknown"], 403, id="garbage"),
    ],
)
async def test_client_address_behind_trusted_proxy(
    forwarded_for, expected_status, start_upstream, start_gateway, http
):
    upstream = start_upstream()
    config = gateway_config(upstream.url, server=TRUSTED_LB, allow_ips=RANGES)
    gateway = await start_gateway(config)
    headers = [("X-Forwarded-For", line) for line in forwarded_for]
    async with http.get(gateway.postback_url(), params=CLICK, headers=headers) as response:
        assert response.status == expected_status
        assert response.headers["X-Gateway-Outcome"] == (
            "forwarded" if expected_status == 200 else "rejected"
        )
    assert len(upstream.received) == (1 if expected_status == 200 else 0)


async def test_forwarded_request_names_the_resolved_client(start_upstream, start_gateway, http):
    upstream = start_upstream()
    config = gateway_config(upstream.url, server=TRUSTED_LB, allow_ips=RANGES)
    gateway = await start_gateway(config)
    headers = {"X-Forwarded-For": "6.6.6.6, 203.0.113.9"}
    async with http.get(gateway.postback_url(), params=CLICK, headers=headers) as response:
        request_id = response.headers["X-Request-ID"]
    assert upstream.received[0].headers["X-Forwarded-For"] == "203.0.113.9"
    assert upstream.received[0].headers["X-Request-ID"] == request_id


async def test_ipv6_peer_is_checked_against_ipv6_entries(start_upstream, start_gateway, http):
    upstream = start_upstream()
    allowed = await start_gateway(gateway_config(upstream.url), host="::1")
    assert (await get(http, allowed.postback_url(), CLICK))[:2] == (200, "forwarded")
    v4_only = gateway_config(upstream.url, allow_ips=["127.0.0.1"])
    refused = await start_gateway(v4_only, host="::1")
    assert (await get(http, refused.postback_url(), CLICK))[:2] == (403, "rejected")


@pytest.fixture
async def dual_stack_gateway(start_upstream) -> AsyncIterator[str]:
    """A gateway on a dual-stack [::] socket: IPv4 callers appear as ::ffff:a.b.c.d."""
    upstream = start_upstream()
    yaml_text = gateway_config(upstream.url, allow_ips=["127.0.0.0/8"])
    runtime = Runtime(parse_config(yaml_text, {"MONETAG_SECRET": SECRET}), Metrics())
    await runtime.start()
    sock = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
    sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
    sock.bind(("::", 0))
    runner = public_runner(runtime)
    await runner.setup()
    await web.SockSite(runner, sock).start()
    yield f"http://127.0.0.1:{sock.getsockname()[1]}/postback/tapper"
    await runner.cleanup()
    await runtime.close(Deadline(1))


async def test_ipv4_mapped_peer_matches_ipv4_allowlist(dual_stack_gateway, http):
    assert (await get(http, dual_stack_gateway, CLICK))[:2] == (200, "forwarded")


# -- 4. secret --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "token",
    [
        pytest.param(None, id="missing"),
        pytest.param("", id="empty"),
        pytest.param("wrong", id="wrong"),
        pytest.param(SECRET + "x", id="longer"),
        pytest.param(SECRET[:-1], id="prefix"),
        pytest.param("ключ", id="non-ascii"),
    ],
)
async def test_bad_secret_is_403_forbidden_and_not_forwarded(
    token, start_upstream, start_gateway, http
):
    upstream = start_upstream()
    gateway = await start_gateway(gateway_config(upstream.url))
    params = {k: v for k, v in CLICK.items() if k != "token"}
    if token is not None:
        params["token"] = token
    status, outcome, body = await get(http, gateway.postback_url(), params)
    assert (status, outcome, json.loads(body)) == (
        403,
        "rejected",
        {"outcome": "rejected", "error": "forbidden"},
    )
    assert upstream.received == []


async def test_secret_given_twice_is_forbidden(start_upstream, start_gateway, http):
    upstream = start_upstream()
    gateway = await start_gateway(gateway_config(upstream.url))
    params = [*CLICK.items(), ("token", "other")]
    assert (await get(http, gateway.postback_url(), params))[:2] == (403, "rejected")


async def test_every_rotated_key_is_accepted(start_upstream, start_gateway, http):
    upstream = start_upstream()
    keys = ["${MONETAG_SECRET}", "next-key-abcdef"]
    config = gateway_config(upstream.url, secret={"query_param": "token", "keys": keys})
    gateway = await start_gateway(config)
    for number, key in enumerate((SECRET, "next-key-abcdef")):
        params = {**CLICK, "uid": f"user-{number}", "token": key}
        assert (await get(http, gateway.postback_url(), params))[:2] == (200, "forwarded")


async def test_secret_is_stripped_from_forwarded_url(start_upstream, start_gateway, http):
    upstream = start_upstream()
    gateway = await start_gateway(gateway_config(upstream.url))
    await get(http, gateway.postback_url(), CLICK)
    forwarded = upstream.received[0]
    assert "token" not in forwarded.query
    assert SECRET not in forwarded.query_string
    assert all(SECRET not in value for value in forwarded.headers.values())


async def test_secret_in_header(start_upstream, start_gateway, http):
    upstream = start_upstream()
    secret = {"header": "X-Postback-Key", "keys": ["${MONETAG_SECRET}"]}
    config = gateway_config(upstream.url, secret=secret)
    gateway = await start_gateway(config)
    params = {k: v for k, v in CLICK.items() if k != "token"}
    assert (await get(http, gateway.postback_url(), params))[:2] == (403, "rejected")
    status, outcome, _ = await get(
        http, gateway.postback_url(), params, headers={"X-Postback-Key": SECRET}
    )
    assert (status, outcome) == (200, "forwarded")
    assert "X-Postback-Key" not in upstream.received[0].headers


# -- 5 and 6. normalize and validate ----------------------------------------------------------


async def test_aliases_then_rename_reach_upstream(start_upstream, start_gateway, http):
    reads_canonical = start_upstream()
    reads_event = start_upstream()
    config = gateway_config(
        reads_canonical.url + "/postback?app=1",
        upstream(reads_event.url + "/cb", rename={"event_type": "event", "ymid": "user"}),
    )
    gateway = await start_gateway(config)
    params = [*CLICK.items(), ("source_app", "x"), ("reward_event_type", "VALUED")]
    assert (await get(http, gateway.postback_url(), params))[:2] == (200, "forwarded")
    first = reads_canonical.received[0]
    assert first.path == "/postback"
    assert list(first.query.items()) == [
        ("app", "1"),
        ("ymid", "user-1"),
        ("event_type", "click"),
        ("zone_id", "42"),
        ("reward_event_type", "valued"),
        ("source_app", "x"),
    ]
    copy = (await eventually_async(lambda: reads_event.received))[0]  # sent in the background
    assert copy.path == "/cb"
    assert copy.query["event"] == "click" and copy.query["user"] == "user-1"
    assert "event_type" not in copy.query and "ymid" not in copy.query


@pytest.mark.parametrize(
    ("params", "parameter", "problem"),
    [
        pytest.param({"event": "click"}, "ymid", "is required", id="missing-ymid"),
        pytest.param({"uid": "{ymid}", "event": "click"}, "ymid", "is required", id="macro"),
        pytest.param({"uid": "", "event": "click"}, "ymid", "must not be empty", id="empty"),
        pytest.param({"uid": "u", "event": "view"}, "event_type", "must be one of", id="event"),
        pytest.param(
            {"uid": "u", "event": "click", "reward_event_type": "paid"},
            "reward_event_type",
            "must be one of",
            id="reward-event-type",
        ),
        pytest.param(
            {"uid": "u", "event": "click", "zone": "12a"}, "zone_id", "whole number", id="zone"
        ),
        pytest.param(
            {"uid": "u", "event": "click", "telegram_id": "-5"},
            "telegram_id",
            "whole number",
            id="telegram-id",
        ),
        pytest.param(
            {"uid": "u", "event": "click", "estimated_price": "-0.01"},
            "estimated_price",
            "non-negative decimal",
            id="negative-price",
        ),
        pytest.param(
            [("uid", "u"), ("event", "click"), ("event", "impression")],
            "event_type",
            "more than once",
            id="repeated-different",
        ),
        pytest.param(
            [("uid", "u"), ("ymid", "v"), ("event", "click")],
            "ymid",
            "more than once",
            id="alias-and-canonical-disagree",
        ),
    ],
)
async def test_invalid_postback_is_400_naming_parameter(
    params, parameter, problem, start_upstream, start_gateway, http
):
    upstream = start_upstream()
    gateway = await start_gateway(gateway_config(upstream.url))
    query = [*(params.items() if isinstance(params, dict) else params), ("token", SECRET)]
    status, outcome, body = await get(http, gateway.postback_url(), query)
    answer = json.loads(body)
    assert (status, outcome) == (400, "invalid")
    assert answer["parameter"] == parameter
    assert problem in answer["problem"]
    assert upstream.received == []


async def test_valid_optional_fields_and_repeats_pass(start_upstream, start_gateway, http):
    upstream = start_upstream()
    gateway = await start_gateway(gateway_config(upstream.url))
    params = [
        *CLICK.items(),
        ("event", "CLICK"),
        ("telegram_id", ""),
        ("estimated_price", "0.0023"),
        ("sub_zone_id", "{sub_zone_id}"),
    ]
    assert (await get(http, gateway.postback_url(), params))[:2] == (200, "forwarded")
    forwarded = upstream.received[0].query
    assert forwarded.getall("event_type") == ["click"]
    assert "telegram_id" not in forwarded  # empty counts as missing, like a macro
    assert "sub_zone_id" not in forwarded  # an unexpanded macro counts as missing


# -- 7. dedup ---------------------------------------------------------------------------------


async def test_duplicate_is_answered_200_and_not_forwarded(start_upstream, start_gateway, http):
    upstream = start_upstream()
    gateway = await start_gateway(gateway_config(upstream.url))
    assert (await get(http, gateway.postback_url(), CLICK))[:2] == (200, "forwarded")
    assert (await get(http, gateway.postback_url(), CLICK))[:2] == (200, "duplicate")
    impression = {**CLICK, "event": "impression"}
    assert (await get(http, gateway.postback_url(), impression))[:2] == (200, "forwarded")
    other_zone = {**CLICK, "zone": "43"}
    assert (await get(http, gateway.postback_url(), other_zone))[:2] == (200, "forwarded")
    assert len(upstream.received) == 3


@pytest.mark.slow
async def test_duplicate_during_inflight_waits_for_first_result(
    start_upstream, start_gateway, http
):
    upstream = start_upstream(default=Answer(delay=0.3))
    gateway = await start_gateway(gateway_config(upstream.url))
    answers = await asyncio.gather(*(get(http, gateway.postback_url(), CLICK) for _ in range(20)))
    outcomes = sorted(outcome for _, outcome, _ in answers)
    assert outcomes == ["duplicate"] * 19 + ["forwarded"]
    assert {status for status, _, _ in answers} == {200}
    assert len(upstream.received) == 1


@pytest.mark.slow
async def test_concurrent_duplicates_take_over_when_first_fails(
    start_upstream, start_gateway, http
):
    upstream = start_upstream(script=[500], default=Answer(delay=0.1))
    gateway = await start_gateway(gateway_config(upstream.url))
    answers = await asyncio.gather(*(get(http, gateway.postback_url(), CLICK) for _ in range(5)))
    outcomes = sorted(outcome for _, outcome, _ in answers)
    assert outcomes == ["duplicate"] * 3 + ["forwarded", "upstream_error"]
    assert len(upstream.received) == 2


async def test_failed_delivery_releases_key_for_retry(start_upstream, start_gateway, http):
    upstream = start_upstream(script=[500])
    gateway = await start_gateway(gateway_config(upstream.url))
    assert (await get(http, gateway.postback_url(), CLICK))[:2] == (502, "upstream_error")
    assert (await get(http, gateway.postback_url(), CLICK))[:2] == (200, "forwarded")
    assert (await get(http, gateway.postback_url(), CLICK))[:2] == (200, "duplicate")
    assert len(upstream.received) == 2


async def test_app_refusal_is_passed_back_and_not_remembered(start_upstream, start_gateway, http):
    upstream = start_upstream(script=[409])
    gateway = await start_gateway(gateway_config(upstream.url))
    assert await get(http, gateway.postback_url(), CLICK) == (409, "forwarded", "nope")
    assert (await get(http, gateway.postback_url(), CLICK))[:2] == (200, "forwarded")
    assert len(upstream.received) == 2


async def test_app_refusal_is_logged_forwarded_with_reason_upstream_refused(
    start_upstream, start_gateway, http, capsys
):
    upstream = start_upstream(script=[409])
    gateway = await start_gateway(gateway_config(upstream.url))
    capsys.readouterr()
    assert await get(http, gateway.postback_url(), CLICK) == (409, "forwarded", "nope")
    output = capsys.readouterr().out
    [line] = [json.loads(line) for line in output.splitlines() if "gateway.access" in line]
    assert (line["outcome"], line["reason"], line["status"], line["upstream_status"]) == (
        "forwarded",
        "upstream_refused",
        409,
        409,
    )


@pytest.mark.process
@pytest.mark.slow
async def test_delivered_event_is_forgotten_after_ttl(start_upstream, start_gateway, http):
    upstream = start_upstream()
    config = gateway_config(upstream.url, dedup={"ttl": "300ms"})
    gateway = await start_gateway(config)
    assert (await get(http, gateway.postback_url(), CLICK))[1] == "forwarded"
    assert (await get(http, gateway.postback_url(), CLICK))[1] == "duplicate"
    await asyncio.sleep(0.45)
    assert (await get(http, gateway.postback_url(), CLICK))[1] == "forwarded"


async def test_dedup_key_fields_come_from_config(start_upstream, start_gateway, http):
    upstream = start_upstream()
    gateway = await start_gateway(gateway_config(upstream.url, dedup={"key": ["ymid"]}))
    assert (await get(http, gateway.postback_url(), CLICK))[1] == "forwarded"
    impression = {**CLICK, "event": "impression"}
    assert (await get(http, gateway.postback_url(), impression))[1] == "duplicate"


# -- 8. forward -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("script", "status", "outcome", "attempts"),
    [
        pytest.param([503, 502], 200, "forwarded", 3, id="retried-503-502-then-ok"),
        pytest.param([503, 503, 504], 502, "upstream_error", 3, id="503-after-retries"),
        pytest.param([500], 502, "upstream_error", 1, id="500-not-retried"),
        pytest.param([301], 502, "upstream_error", 1, id="redirect-not-followed"),
        pytest.param([404], 404, "forwarded", 1, id="4xx-passed-back-not-retried"),
        pytest.param([DROP, 200], 200, "forwarded", 2, id="dropped-connection-retried"),
        pytest.param(
            [Answer(delay=2.0)] * 3,
            504,
            "upstream_error",
            3,
            id="timeout-504",
            marks=pytest.mark.process,
        ),
    ],
)
@pytest.mark.slow
async def test_upstream_failures_and_retries(
    script, status, outcome, attempts, start_upstream, start_gateway, http
):
    app = start_upstream(script=list(script))
    gateway = await start_gateway(gateway_config(upstream(app.url, timeout="300ms")))
    assert (await get(http, gateway.postback_url(), CLICK))[:2] == (status, outcome)
    assert len(app.received) == attempts


@pytest.mark.process
@pytest.mark.slow
async def test_a_hung_app_is_answered_504_within_the_routes_deadline(
    start_upstream, start_gateway, http
):
    app = start_upstream(default=Answer(delay=10.0))  # never answers
    # the shipped per-attempt timeout and retries: 15 s and more before the deadline
    config = gateway_config(upstream(app.url, timeout="5s", retries=2), deadline="800ms")
    gateway = await start_gateway(config)
    started = time.monotonic()
    status, outcome, body = await get(http, gateway.postback_url(), CLICK)
    assert time.monotonic() - started < 1.5
    error = json.loads(body)["error"]
    assert (status, outcome, error) == (504, "upstream_error", "upstream_timeout")
    assert len(app.received) == 1  # the one attempt the deadline had room for


def test_the_default_deadline_stays_below_what_senders_wait():
    config = parse_config(gateway_config("http://127.0.0.1:3000/cb"), {"MONETAG_SECRET": SECRET})
    (route,) = config.routes
    assert route.deadline == 10.0  # docs/request-path.md: senders commonly give 5-30 s


@pytest.mark.slow
async def test_unreachable_upstream_is_502(start_gateway, http):
    with socket.socket() as unused:
        unused.bind(("127.0.0.1", 0))
        port = unused.getsockname()[1]
    gateway = await start_gateway(gateway_config(f"http://127.0.0.1:{port}/postback"))
    status, outcome, body = await get(http, gateway.postback_url(), CLICK)
    assert (status, outcome, json.loads(body)["error"]) == (
        502,
        "upstream_error",
        "upstream_unavailable",
    )


@pytest.mark.slow
async def test_first_upstream_answers_copies_go_to_the_rest(start_upstream, start_gateway, http):
    first = start_upstream(body="from first")
    failing_copy = start_upstream(default=500)
    slow_copy = start_upstream(default=Answer(delay=0.3))
    gateway = await start_gateway(gateway_config(first.url, failing_copy.url, slow_copy.url))
    assert await get(http, gateway.postback_url(), CLICK) == (200, "forwarded", "from first")
    await eventually_async(lambda: not gateway.runtime.gateway._copies)  # every copy done
    assert len(first.received) == 1
    assert len(failing_copy.received) == 1  # 500 is not retried; logged only
    assert len(slow_copy.received) == 1
    request_ids = {u.received[0].headers["X-Request-ID"] for u in (first, failing_copy, slow_copy)}
    assert len(request_ids) == 1


async def test_copies_are_not_sent_when_first_upstream_fails(start_upstream, start_gateway, http):
    first = start_upstream(default=500)
    copy = start_upstream()
    gateway = await start_gateway(gateway_config(first.url, copy.url))
    assert (await get(http, gateway.postback_url(), CLICK))[:2] == (502, "upstream_error")
    assert not gateway.runtime.gateway._copies  # none scheduled, none still on its way
    assert copy.received == []


# -- logs -------------------------------------------------------------------------------------


async def test_log_line_has_the_event_and_never_the_secret(
    start_upstream, start_gateway, http, capsys
):
    upstream = start_upstream()
    gateway = await start_gateway(gateway_config(upstream.url))
    capsys.readouterr()
    await get(http, gateway.postback_url(), CLICK)
    await get(http, gateway.postback_url(), {**CLICK, "token": "wrong-" + SECRET})
    output = capsys.readouterr().out
    lines = [json.loads(line) for line in output.splitlines() if "gateway.access" in line]
    assert [(line["outcome"], line["reason"]) for line in lines] == [
        ("forwarded", None),
        ("rejected", "secret_wrong"),
    ]
    forwarded = lines[0]
    assert (forwarded["level"], forwarded["message"]) == ("info", "postback")
    assert forwarded["time"].endswith("Z")
    assert forwarded["route"] == "tapper"
    assert forwarded["client"] == "127.0.0.1"
    assert (forwarded["ymid"], forwarded["event_type"], forwarded["zone_id"]) == (
        "user-1",
        "click",
        "42",
    )
    assert forwarded["upstream_status"] == 200
    assert forwarded["request_id"]
    assert isinstance(forwarded["latency_ms"], float)
    assert ["uid", "user-1"] in forwarded["query"]
    assert SECRET not in output


# -- the brief's legacy handler behind the gateway --------------------------------------------


async def test_legacy_sample_handler_grants_click_exactly_once(start_gateway, http):
    legacy = create_demo_app()
    runner = web.AppRunner(legacy, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    try:
        port = runner.addresses[0][1]
        gateway = await start_gateway(gateway_config(f"http://127.0.0.1:{port}/postback"))
        # Monetag's URL says event= and uid=; the handler reads event_type and ymid.
        postback = {"uid": "player-7", "event": "click", "zone": "8790478", "token": SECRET}
        burst = [get(http, gateway.postback_url(), postback) for _ in range(10)]
        answers = await asyncio.gather(*burst)
        answers.append(await get(http, gateway.postback_url(), postback))
        assert {status for status, _, _ in answers} == {200}
        assert legacy[GRANTED] == [{"ymid": "player-7", "event_type": "click"}]
    finally:
        await runner.cleanup()
