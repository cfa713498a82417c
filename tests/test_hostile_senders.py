"""Hostile senders over real sockets: tables of crafted requests, each asserting the status, the
outcome, what the app behind the gateway received, and what the log line says.

The route under attack forwards to an app that reads `user_id` (renamed from `ymid`) and `event`
(renamed from `event_type`), has its own `api_key` static parameter and `app` URL parameter:
every one of those names is one a sender must not be able to set.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

import aiohttp
import pytest
from aiohttp import web
from yarl import URL

from gateway.checks.paramnames import comparable_forms
from gateway.metrics import MAX_ZONE_LABELS
from gateway.serving.app import admin_runner
from tests.conftest import SECRET, GatewayFactory, RunningGateway, UpstreamFactory, access_lines
from tests.support.gatewayconfig import MONETAG_ALIASES, gateway_config, route, upstream
from tests.support.upstream import Received, RecordingUpstream

ROTATED = "rotated-key-98765"  # a second accepted key
GUARD = 10.0  # bound on every socket wait


def hostile_yaml(app: str, server: Mapping[str, Any] | None = None) -> str:
    """`tapper`, whose app reads renamed fields, its own URL parameter and a static API key;
    `headerkey`, whose secret comes in a header."""
    tapper = route(
        [
            upstream(
                f"{app}/postback?app=gw",
                timeout="2s",
                retries=0,
                rename={"ymid": "user_id", "event_type": "event"},
                static_params={"api_key": "app-key-123"},
            )
        ],
        allow_ips=["127.0.0.1"],
        secret={"query_param": "token", "keys": ["${MONETAG_SECRET}", ROTATED]},
        aliases={**MONETAG_ALIASES, "value": "reward_event_type", "amount": "estimated_price"},
    )
    headerkey = route(
        [upstream(f"{app}/postback", timeout="2s", retries=0)],
        allow_ips=["127.0.0.1"],
        secret={"header": "X-Postback-Key", "keys": ["${MONETAG_SECRET}"]},
        aliases={"uid": "ymid", "event": "event_type"},
    )
    return gateway_config(
        server={"max_query_length": 300, **(server or {})},
        routes={"tapper": tapper, "headerkey": headerkey},
    )


Target = tuple[RunningGateway, RecordingUpstream]  # a gateway and the app behind it

# the names the app behind `tapper` reads that the gateway itself writes
WRITTEN = {"user_id", "event", "zone_id", "api_key", "app", "token"}


@pytest.fixture
async def target(start_upstream: UpstreamFactory, start_gateway: GatewayFactory) -> Target:
    app = start_upstream()
    gateway = await start_gateway(hostile_yaml(app.url))
    return gateway, app


async def get_raw_query(
    http: aiohttp.ClientSession, gateway: RunningGateway, path: str, query: str, **kwargs: Any
) -> tuple[int, str, str]:
    """GET with the query string exactly as given (no re-encoding by the client)."""
    url = URL(f"{gateway.url}{path}?{query}", encoded=True)  # sent byte for byte
    async with http.get(url, **kwargs) as response:
        return response.status, response.headers["X-Gateway-Outcome"], await response.text()


CLICK = f"uid=u1&event=click&zone=1&token={SECRET}"


async def forwarded_with(target: Target, http: aiohttp.ClientSession, extra: str) -> Received:
    """Send CLICK with `extra` added to its query, byte for byte; it must be forwarded, and
    this is what the app received."""
    gateway, app = target
    answer = await get_raw_query(http, gateway, "/postback/tapper", f"{CLICK}&{extra}")
    assert answer[:2] == (200, "forwarded")
    (received,) = app.received
    return received


def metric(gateway: RunningGateway, name: str, **labels: str) -> float:
    value = gateway.runtime.metrics.registry.get_sample_value(name, labels)
    return value or 0.0


# -- 1. nothing the gateway writes can be set by a sender ------------------------------------


@pytest.mark.parametrize(
    "name",
    [
        pytest.param("user_id", id="the-renamed-ymid"),
        pytest.param("USER_ID", id="renamed-ymid-upper-case"),
        pytest.param("user.id", id="php-reads-user.id-as-user_id"),
        pytest.param("user%20id", id="php-reads-user-space-id-as-user_id"),
        pytest.param("user_id%5B%5D", id="rails-reads-user_id-array-as-user_id"),
        pytest.param("user_id%5Bx%5D", id="php-array-under-user_id"),
        pytest.param("Event", id="renamed-event-type-other-case"),
        pytest.param("api_key", id="the-static-parameter"),
        pytest.param("API_KEY", id="static-parameter-upper-case"),
        pytest.param("app", id="the-upstream-url-parameter"),
        pytest.param("App", id="upstream-url-parameter-other-case"),
        pytest.param("Zone_Id", id="canonical-name-other-case"),
        pytest.param("YMID", id="canonical-ymid-upper-case"),
    ],
)
async def test_parameter_posing_as_a_name_the_gateway_writes_never_reaches_the_app(
    name: str,
    target: Target,
    http: aiohttp.ClientSession,
    capsys: Any,
) -> None:
    gateway, _ = target
    capsys.readouterr()

    received = await forwarded_with(target, http, f"{name}=victim")

    assert "victim" not in received.query_string
    app_reads = {
        key: received.query.getall(key)
        for key in received.query
        if set(comparable_forms(key)) & WRITTEN
    }
    assert app_reads == {
        "app": ["gw"],
        "api_key": ["app-key-123"],
        "user_id": ["u1"],
        "event": ["click"],
        "zone_id": ["1"],
    }
    (line,) = access_lines(capsys)
    assert line["dropped"] == [received_name(name)]
    assert metric(gateway, "gateway_dropped_parameters_total", route="tapper") == 1


def received_name(raw: str) -> str:
    """A raw (percent-encoded) name as the gateway decodes it."""
    from urllib.parse import unquote

    return unquote(raw)


async def test_unrelated_extras_still_pass_through(
    target: Target, http: aiohttp.ClientSession
) -> None:
    gateway, upstream = target

    await get_raw_query(http, gateway, "/postback/tapper", f"{CLICK}&campaign=c7&Campaign=C8")

    assert upstream.received[0].query.getall("campaign") == ["c7"]
    assert upstream.received[0].query.getall("Campaign") == ["C8"]


# -- 2. the key never reaches a log line or the app -------------------------------------------


@pytest.mark.parametrize(
    ("extra", "dropped"),
    [
        pytest.param(f"TOKEN={SECRET}", ["TOKEN"], id="key-under-upper-case-name"),
        pytest.param(f"Token={SECRET}", ["Token"], id="key-under-mixed-case-name"),
        pytest.param(f"token%5B%5D={SECRET}", ["token[]"], id="key-under-array-name"),
        pytest.param(f"note={SECRET}", ["note"], id="key-under-another-name"),
        pytest.param(f"note={ROTATED}", ["note"], id="rotated-key-under-another-name"),
        pytest.param(f"{SECRET}=1", ["(a key)"], id="key-as-a-parameter-name"),
        pytest.param("TOKEN=guess", ["TOKEN"], id="guess-under-a-secret-spelling"),
    ],
)
async def test_the_key_under_any_name_is_neither_logged_nor_forwarded(
    extra: str,
    dropped: list[str],
    target: Target,
    http: aiohttp.ClientSession,
    capsys: Any,
) -> None:
    capsys.readouterr()

    received = await forwarded_with(target, http, extra)

    assert SECRET not in received.query_string and ROTATED not in received.query_string
    assert "guess" not in received.query_string
    output = capsys.readouterr().out
    assert SECRET not in output and ROTATED not in output
    (line,) = [json.loads(text) for text in output.splitlines() if "gateway.access" in text]
    assert line["dropped"] == dropped


async def test_key_of_a_header_route_sent_in_the_query_is_neither_logged_nor_forwarded(
    target: Target, http: aiohttp.ClientSession, capsys: Any
) -> None:
    gateway, upstream = target
    capsys.readouterr()

    answer = await get_raw_query(
        http,
        gateway,
        "/postback/headerkey",
        f"uid=u1&event=click&token={SECRET}",
        headers={"X-Postback-Key": SECRET},
    )

    assert answer[:2] == (200, "forwarded")
    assert SECRET not in upstream.received[0].query_string
    assert all(SECRET not in value for value in upstream.received[0].headers.values())
    output = capsys.readouterr().out
    assert SECRET not in output
    assert json.loads(output.splitlines()[-1])["dropped"] == ["token"]


async def test_a_rejected_request_logs_no_key_either(
    target: Target, http: aiohttp.ClientSession, capsys: Any
) -> None:
    gateway, _ = target
    capsys.readouterr()

    answer = await get_raw_query(
        http, gateway, "/postback/tapper", f"uid=u1&token=wrong&TOKEN={SECRET}&x={SECRET}"
    )

    assert answer[:2] == (403, "rejected")
    assert SECRET not in capsys.readouterr().out


# -- malformed HTTP: refused by aiohttp's parser, answered, logged and counted by us ---------


@dataclass
class RawAnswer:
    status: int
    headers: dict[str, str]
    body: bytes


async def raw_exchange(port: int, request: bytes) -> RawAnswer:
    """Write `request` as is and read the answer until the server closes the connection."""
    reader, writer = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port), GUARD)
    try:
        writer.write(request)
        await writer.drain()
        data = await asyncio.wait_for(reader.read(-1), GUARD)
    finally:
        writer.close()
    head, _, body = data.partition(b"\r\n\r\n")
    status_line, *header_lines = head.decode("latin-1").split("\r\n")
    headers = {}
    for line in header_lines:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return RawAnswer(int(status_line.split()[1]), headers, body)


def _port(gateway: RunningGateway) -> int:
    return int(gateway.url.rsplit(":", 1)[1])


TLS_HELLO = b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03"  # a ClientHello's first bytes
KEYED = f"/postback/tapper?uid=u1&event=click&token={SECRET}".encode()


@pytest.mark.parametrize(
    ("request_bytes", "status", "problem"),
    [
        pytest.param(
            b"GET " + KEYED + b"&x=a b HTTP/1.1\r\nHost: x\r\n\r\n",
            400,
            "bad_request_line",
            id="raw-space-in-the-target",
        ),
        pytest.param(
            b"GET " + KEYED + b"&x=\x01 HTTP/1.1\r\nHost: x\r\n\r\n",
            400,
            "bad_target",
            id="control-byte-in-the-target",
        ),
        pytest.param(
            b"GET " + KEYED + b"&x=\xff HTTP/1.1\r\nHost: x\r\n\r\n",
            400,
            "bad_target",
            id="8-bit-byte-in-the-target",
        ),
        pytest.param(
            b"GET " + KEYED + b" HTTP/1.1\nHost: x\n\n",
            400,
            "bad_request_line",
            id="bare-lf-line-endings",
        ),
        pytest.param(
            b"GET " + KEYED + b"&x=" + b"a" * 70_000 + b" HTTP/1.1\r\nHost: x\r\n\r\n",
            414,
            "request_line_too_long",
            id="request-line-over-64k",
        ),
        pytest.param(
            b"GET " + KEYED + b" HTTP/1.1\r\nX-Pad: " + b"k" * 9000 + SECRET.encode() + b"\r\n\r\n",
            431,
            "header_too_long",
            id="header-line-over-8k",
        ),
        pytest.param(
            b"GET " + KEYED + b" HTTP/1.1\r\nX-Key: a\x00" + SECRET.encode() + b"\r\n\r\n",
            400,
            "bad_request",
            id="nul-in-a-header-value",
        ),
        pytest.param(
            b"G@T " + KEYED + b" HTTP/1.1\r\n\r\n", 400, "bad_method", id="bad-method-token"
        ),
        pytest.param(
            b"GET " + KEYED + b" HTTP/9.9\r\n\r\n",
            400,
            "bad_request_line",
            id="unknown-http-version",
        ),
        pytest.param(
            TLS_HELLO + SECRET.encode() + b"\r\n\r\n",
            400,
            "bad_method",
            id="tls-hello-on-the-plain-port",
        ),
    ],
)
async def test_malformed_request_gets_our_answer_one_short_log_line_and_a_metric(
    request_bytes: bytes,
    status: int,
    problem: str,
    target: Target,
    capsys: Any,
    caplog: pytest.LogCaptureFixture,
) -> None:
    gateway, upstream = target
    capsys.readouterr()
    caplog.set_level(logging.DEBUG)

    answer = await raw_exchange(_port(gateway), request_bytes)

    assert answer.status == status
    assert answer.headers["x-gateway-outcome"] == "invalid"
    assert answer.headers["connection"] == "close"
    assert json.loads(answer.body) == {
        "outcome": "invalid",
        "error": "malformed request",
        "problem": problem,
    }
    assert SECRET.encode() not in answer.body
    assert upstream.received == []
    output = capsys.readouterr()
    (line,) = [json.loads(text) for text in output.out.splitlines() if "gateway.access" in text]
    assert (line["status"], line["outcome"], line["reason"]) == (
        status,
        "invalid",
        "malformed_request",
    )
    assert line["detail"] == problem
    assert line["client"] == "127.0.0.1"
    assert len(output.out) < 1000  # one short line, whatever the size of the request
    assert SECRET not in output.out + output.err
    assert not [record for record in caplog.records if record.exc_info]
    assert not [record for record in caplog.records if SECRET in record.getMessage()]
    assert metric(gateway, "gateway_malformed_requests_total", problem=problem) == 1
    assert metric(gateway, "gateway_requests_total", route="unknown", outcome="invalid") == 1


# -- 4. equal values are one event --------------------------------------------------------------


@pytest.mark.parametrize(
    ("queries", "outcomes", "app_zone"),
    [
        pytest.param(
            ["zone=42", "zone=042"],
            ["forwarded", "duplicate"],
            ["42"],
            id="leading-zero-after-plain",
        ),
        pytest.param(
            ["zone=042", "zone=0042"],
            ["forwarded", "duplicate"],
            ["42"],
            id="app-sees-the-plain-number",
        ),
        pytest.param(["zone=0", "zone=000"], ["forwarded", "duplicate"], ["0"], id="zero"),
        pytest.param(["", "zone="], ["forwarded", "duplicate"], [], id="missing-then-empty"),
        pytest.param(["zone=", ""], ["forwarded", "duplicate"], [], id="empty-then-missing"),
        pytest.param(
            ["zone=%7Bzone_id%7D", "zone="], ["forwarded", "duplicate"], [], id="macro-then-empty"
        ),
        pytest.param(
            ["zone=42", "zone=43"],
            ["forwarded", "forwarded"],
            ["42", "43"],
            id="different-zones-are-different-events",
        ),
    ],
)
async def test_equivalent_values_are_one_event_for_dedup_and_the_app(
    queries: list[str],
    outcomes: list[str],
    app_zone: list[str],
    target: Target,
    http: aiohttp.ClientSession,
) -> None:
    gateway, upstream = target
    answers = []
    for zone in queries:
        query = f"uid=u1&event=click&token={SECRET}" + (f"&{zone}" if zone else "")
        answers.append(await get_raw_query(http, gateway, "/postback/tapper", query))

    assert [outcome for _, outcome, _ in answers] == outcomes
    assert [zone for r in upstream.received for zone in r.query.getall("zone_id", [])] == app_zone


# -- 5. money figures stay sane -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("amount", "status", "revenue"),
    [
        pytest.param("0.0042", 200, 0.0042, id="typical-price"),
        pytest.param("10", 200, 10.0, id="at-the-limit"),
        pytest.param("10.01", 400, 0.0, id="over-the-limit"),
        pytest.param("9" * 30, 400, 0.0, id="thirty-digits"),
        pytest.param("0" * 25 + "50", 400, 0.0, id="leading-zeros-hide-nothing"),
    ],
)
async def test_estimated_price_beyond_the_limit_is_refused_and_never_counted(
    amount: str,
    status: int,
    revenue: float,
    target: Target,
    http: aiohttp.ClientSession,
) -> None:
    gateway, upstream = target

    answer = await get_raw_query(
        http, gateway, "/postback/tapper", f"{CLICK}&value=valued&amount={amount}"
    )

    assert answer[0] == status
    if status == 400:
        body = json.loads(answer[2])
        assert (body["parameter"], body["problem"]) == (
            "estimated_price",
            "must be at most 10 (max_estimated_price)",
        )
        assert upstream.received == []
    counted = metric(
        gateway, "gateway_valued_estimated_price_usd_total", route="tapper", zone_id="1"
    )
    assert counted == pytest.approx(revenue)


# -- 6. bytes that are not UTF-8 are refused, not guessed at ------------------------------------


@pytest.mark.parametrize(
    ("query", "parameter"),
    [
        pytest.param("uid=%FF%FEabc", "uid", id="invalid-start-bytes"),
        pytest.param("uid=%FE%FFabc", "uid", id="the-same-swapped-is-not-the-same-event"),
        pytest.param("uid=abc%C3", "uid", id="truncated-sequence"),
        pytest.param("uid=%C0%AF", "uid", id="overlong-slash"),
        pytest.param("uid=%ED%A0%80", "uid", id="encoded-surrogate"),
        pytest.param("uid=u1&%FF=1", "%FF", id="undecodable-name"),
        pytest.param("uid=u1&note=%80", "note", id="undecodable-extra"),
    ],
)
async def test_value_that_is_not_utf8_is_400_naming_the_parameter(
    query: str,
    parameter: str,
    target: Target,
    http: aiohttp.ClientSession,
) -> None:
    gateway, upstream = target

    status, outcome, body = await get_raw_query(
        http, gateway, "/postback/tapper", f"{query}&event=click&token={SECRET}"
    )

    assert (status, outcome) == (400, "invalid")
    assert (json.loads(body)["parameter"], json.loads(body)["problem"]) == (
        parameter,
        "is not UTF-8 text",
    )
    assert upstream.received == []


async def test_valid_utf8_is_decoded_and_forwarded(
    target: Target, http: aiohttp.ClientSession
) -> None:
    gateway, upstream = target
    ymid = "игрок-✓"

    answer = await get_raw_query(
        http, gateway, "/postback/tapper", f"uid={quote(ymid)}&event=click&token={SECRET}"
    )

    assert answer[:2] == (200, "forwarded")
    assert upstream.received[0].query["user_id"] == ymid


# -- 7. limits and routes apply to what was sent ------------------------------------------------


async def test_query_length_limit_counts_the_bytes_sent_not_the_decoded_text(
    target: Target, http: aiohttp.ClientSession
) -> None:
    gateway, upstream = target
    escaped = f"{CLICK}&note=" + "%41" * 90  # 270 escaped bytes, 90 once decoded
    plain = f"{CLICK}&note=" + "A" * 90

    assert (await get_raw_query(http, gateway, "/postback/tapper", plain))[:2] == (200, "forwarded")
    too_long = await get_raw_query(http, gateway, "/postback/tapper", escaped)

    assert too_long[:2] == (414, "invalid")
    assert len(upstream.received) == 1
    assert metric(gateway, "gateway_requests_total", route="tapper", outcome="invalid") == 1


@pytest.mark.parametrize(
    "path",
    [
        pytest.param("/postback%2Ftapper", id="encoded-slash"),
        pytest.param("/postback/%74apper", id="encoded-letter"),
        pytest.param("/postback//tapper", id="double-slash"),
        pytest.param("/postback/./tapper", id="dot-segment"),
        pytest.param("/postback/x/../tapper", id="dot-dot-segment"),
        pytest.param("/Postback/tapper", id="other-case"),
        pytest.param("/postback/tapper/", id="trailing-slash"),
        pytest.param("/postback/tapper;x=1", id="path-parameter"),
    ],
)
async def test_route_matches_the_path_exactly_as_sent(
    path: str, target: Target, http: aiohttp.ClientSession
) -> None:
    gateway, upstream = target

    answer = await get_raw_query(http, gateway, path, CLICK)

    assert answer[:2] == (404, "not_found")
    assert upstream.received == []


# -- 8. counted under their route; request ids are ours ----------------------------------------


async def test_405_and_414_on_a_known_route_are_counted_under_that_route(
    target: Target, http: aiohttp.ClientSession
) -> None:
    gateway, _ = target

    async with http.post(f"{gateway.url}/postback/tapper?{CLICK}") as response:
        assert response.status == 405
    await get_raw_query(http, gateway, "/postback/tapper", CLICK + "&x=" + "a" * 400)

    assert metric(gateway, "gateway_requests_total", route="tapper", outcome="rejected") == 1
    assert metric(gateway, "gateway_requests_total", route="tapper", outcome="invalid") == 1
    assert metric(gateway, "gateway_requests_total", route="unknown", outcome="rejected") == 0


async def test_a_callers_request_id_is_logged_but_never_becomes_ours(
    target: Target, http: aiohttp.ClientSession, capsys: Any
) -> None:
    gateway, upstream = target
    capsys.readouterr()
    ids = []
    for user in ("u1", "u2"):
        query = f"uid={user}&event=click&token={SECRET}"
        async with http.get(
            f"{gateway.url}/postback/tapper?{query}", headers={"X-Request-ID": "same-id"}
        ) as response:
            ids.append(response.headers["X-Request-ID"])

    forwarded_ids = [received.headers["X-Request-ID"] for received in upstream.received]
    assert forwarded_ids == ids
    assert len(set(ids)) == 2 and "same-id" not in ids
    lines = access_lines(capsys)
    assert [line["caller_request_id"] for line in lines] == ["same-id", "same-id"]
    assert [line["request_id"] for line in lines] == ids


async def test_an_unsafe_caller_request_id_is_not_logged(
    target: Target, http: aiohttp.ClientSession, capsys: Any
) -> None:
    gateway, _ = target
    capsys.readouterr()

    async with http.get(
        f"{gateway.url}/postback/tapper?{CLICK}", headers={"X-Request-ID": 'x" y'}
    ) as response:
        assert response.status == 200

    assert access_lines(capsys)[0]["caller_request_id"] is None


# -- 3. a half-sent request line is cut off on both ports -----------------------------------


@pytest.mark.parametrize("port_name", ["public", "admin"])
@pytest.mark.slow
async def test_connection_that_never_finishes_its_headers_is_closed_at_client_timeout(
    port_name: str, start_upstream: UpstreamFactory, start_gateway: GatewayFactory
) -> None:
    app = start_upstream()
    gateway = await start_gateway(hostile_yaml(app.url, server={"client_timeout": "300ms"}))
    admin = admin_runner(gateway.runtime)
    await admin.setup()
    await web.TCPSite(admin, "127.0.0.1", 0).start()
    try:
        port = _port(gateway) if port_name == "public" else admin.addresses[0][1]
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"GET /hea")  # half a request line, then silence
        await writer.drain()
        started = time.monotonic()
        assert await asyncio.wait_for(reader.read(-1), GUARD) == b""  # closed by the server
        assert time.monotonic() - started < GUARD / 2
        writer.close()
    finally:
        await admin.cleanup()


# -- values a sender chooses that would grow what the gateway keeps -----------------------------


@pytest.mark.slow
async def test_revenue_series_are_bounded_whatever_zones_senders_choose(
    start_upstream, start_gateway, http
):
    """Before: 2,000 valued events with distinct zone_ids made 2,000 series."""
    app = start_upstream()
    gateway = await start_gateway(gateway_config(app.url))
    for zone in range(MAX_ZONE_LABELS + 30):
        params = {
            "uid": f"u{zone}",
            "event": "click",
            "zone": str(zone),
            "reward_event_type": "valued",
            "estimated_price": "0.001",
            "token": SECRET,
        }
        async with http.get(gateway.postback_url(), params=params) as response:
            assert response.status == 200
    zones = {
        sample.labels["zone_id"]
        for family in gateway.runtime.metrics.registry.collect()
        if family.name == "gateway_valued_estimated_price_usd"
        for sample in family.samples
        if sample.name.endswith("_total")
    }
    assert len(zones) == MAX_ZONE_LABELS + 1 and "other" in zones


async def test_a_zone_the_config_names_keeps_its_own_revenue_series(
    start_upstream, start_gateway, http
):
    app = start_upstream()
    named = [str(n) for n in range(900, 910)]
    gateway = await start_gateway(gateway_config(app.url, match={"zone_id": named}))
    for zone in [*(str(n) for n in range(MAX_ZONE_LABELS)), *named]:  # others fill the cap
        params = {
            "uid": f"u{zone}",
            "event": "click",
            "zone": zone,
            "reward_event_type": "valued",
            "estimated_price": "0.5",
            "token": SECRET,
        }
        async with http.get(gateway.postback_url(), params=params) as response:
            assert response.status == 200
    registry = gateway.runtime.metrics.registry
    value = registry.get_sample_value(
        "gateway_valued_estimated_price_usd_total", {"route": "tapper", "zone_id": "909"}
    )
    assert value == 0.5


@pytest.mark.parametrize(
    ("first", "second"),
    [
        pytest.param("caf\u00e9-42", "cafe\u0301-42", id="nfc-then-nfd"),
        pytest.param("cafe\u0301-42", "caf\u00e9-42", id="nfd-then-nfc"),
    ],
)
async def test_the_same_id_in_another_unicode_spelling_is_a_duplicate(
    first, second, start_upstream, start_gateway, http
):
    app = start_upstream()
    gateway = await start_gateway(gateway_config(app.url))
    outcomes = []
    for ymid in (first, second):
        params = {"uid": ymid, "event": "click", "zone": "1", "token": SECRET}
        async with http.get(gateway.postback_url(), params=params) as response:
            outcomes.append(response.headers["X-Gateway-Outcome"])
    assert outcomes == ["forwarded", "duplicate"]
    assert [received.query["ymid"] for received in app.received] == ["caf\u00e9-42"]


async def test_an_id_with_a_zero_width_space_is_refused_naming_ymid(
    start_upstream, start_gateway, http
):
    app = start_upstream()
    gateway = await start_gateway(gateway_config(app.url))
    params = {"uid": "user\u200b42", "event": "click", "zone": "1", "token": SECRET}
    async with http.get(gateway.postback_url(), params=params) as response:
        assert response.status == 400
        assert (await response.json())["parameter"] == "ymid"
    assert app.received == []
