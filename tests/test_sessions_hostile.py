"""Reward sessions under attack, over real sockets: crafted requests to the issuing endpoint,
the status endpoint and the postback path of a route with `sessions:`, each asserting the
answer a frontend or an attacker gets (status and named reason, never a 500 or a hang), what
the app behind the gateway received (nothing that should not be paid), and that no secret
reaches an answer or a log line. tests/test_sessions.py covers the flows that should work;
this file covers what should not."""

from __future__ import annotations

import asyncio
import base64
import http.client
import json
import logging
import re
import signal
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, quote

import aiohttp
import pytest
from yarl import URL

from gateway.config import parse_config
from tests.conftest import GatewayFactory, RunningGateway, Sender, UpstreamFactory
from tests.support import processes
from tests.support.gatewayconfig import gateway_config
from tests.support.processes import SECRET, free_port, spawn_gateway
from tests.support.queuedgateway import Gateway, Harness, Setup, harness
from tests.support.sessionsconfig import (
    ORIGIN,
    OTHER_SIGNING_KEY,
    SESSIONS_ENV,
    SIGNING_KEY,
    sessions_config,
    sessions_route,
)
from tests.support.telegram import TEST_BOT_TOKEN, signed_init_data
from tests.support.upstream import RecordingUpstream
from tests.support.waiting import eventually
from tests.test_sessions import (
    OTHER_USER,
    USER,
    ask,
    init_data,
    issue,
    metric,
    postback,
    signed,
    start,
    status,
)

__all__ = ["harness"]  # a fixture, used by name

GUARD = 5.0  # bound on every wait for the gateway: past it, the gateway hung
ISSUING = "/ymid/tapper"
ENV = {**SESSIONS_ENV, "OTHER_YMID_KEY": OTHER_SIGNING_KEY}


def port_of(gateway: RunningGateway) -> int:
    return int(gateway.url.rsplit(":", 1)[1])


@dataclass
class RawAnswer:
    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


async def read_answer(reader: asyncio.StreamReader) -> RawAnswer:
    """One HTTP answer off the stream, framed by its Content-Length or chunks (the server may
    keep the connection open after it, reading what the client still sends)."""
    head = await reader.readuntil(b"\r\n\r\n")
    status_line, *header_lines = head[:-4].decode("latin-1").split("\r\n")
    headers = {}
    for line in header_lines:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    if "content-length" in headers:
        body = await reader.readexactly(int(headers["content-length"]))
    elif headers.get("transfer-encoding") == "chunked":
        body = b""
        while size := int((await reader.readline()).strip(), 16):
            body += await reader.readexactly(size)
            await reader.readline()
    else:
        body = await reader.read(-1)
    return RawAnswer(int(status_line.split()[1]), headers, body)


async def raw_exchange(port: int, request: bytes) -> RawAnswer:
    """Write `request` as is: the first answer to it."""
    reader, writer = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port), GUARD)
    try:
        writer.write(request)
        await writer.drain()
        return await asyncio.wait_for(read_answer(reader), GUARD)
    finally:
        writer.close()


def raw_post(body: bytes, *, origin: str = ORIGIN, extra: bytes = b"") -> bytes:
    return (
        b"POST " + ISSUING.encode() + b" HTTP/1.1\r\nHost: gw\r\nConnection: close\r\n"
        b"Origin: " + origin.encode() + b"\r\nContent-Type: application/json\r\n"
        b"Content-Length: %d\r\n" % len(body) + extra + b"\r\n" + body
    )


def raw_get(target: str | bytes, origin: str = ORIGIN) -> bytes:
    path = target if isinstance(target, bytes) else target.encode()
    return (
        b"GET " + path + b" HTTP/1.1\r\nHost: gw\r\nConnection: close\r\n"
        b"Origin: " + origin.encode() + b"\r\n\r\n"
    )


async def started(
    start_gateway: GatewayFactory, app: RecordingUpstream, tmp_path: Path, **sessions: Any
) -> RunningGateway:
    return await start(start_gateway, app, tmp_path / "gw.db", **sessions)


def no_error_lines(caplog: pytest.LogCaptureFixture) -> None:
    """No log line of ERROR or above (aiohttp's 'Error handling request' and its traceback)."""
    errors = [f"{r.name}: {r.getMessage()}" for r in caplog.records if r.levelno >= logging.ERROR]
    assert errors == []


def issued_count(gateway: RunningGateway) -> float:
    return metric(gateway, "gateway_ymids_issued_total", route="tapper", placement="")


# -- the issuing endpoint: methods ---------------------------------------------------------------


@pytest.mark.parametrize("method", ["GET", "PUT", "DELETE", "PATCH", "HEAD"])
async def test_a_method_other_than_post_on_the_issuing_path_is_405_naming_post(
    start_upstream: UpstreamFactory, start_gateway: GatewayFactory, http, tmp_path, method: str
) -> None:
    gateway = await started(start_gateway, start_upstream(), tmp_path)
    headers = {"Origin": ORIGIN}
    body = json.dumps({"init_data": init_data()})
    async with http.request(method, gateway.url + ISSUING, data=body, headers=headers) as answer:
        assert answer.status == 405
        assert answer.headers["Allow"] == "POST, OPTIONS"
        assert answer.headers["Access-Control-Allow-Origin"] == ORIGIN
        if method != "HEAD":
            assert (await answer.json())["error"] == "method_not_allowed"
    assert issued_count(gateway) == 0


@pytest.mark.parametrize("method", ["POST", "PUT", "DELETE", "OPTIONS"])
async def test_a_method_other_than_get_on_a_status_path_is_405(
    start_upstream: UpstreamFactory, start_gateway: GatewayFactory, http, tmp_path, method: str
) -> None:
    gateway = await started(start_gateway, start_upstream(), tmp_path)
    ymid = await issue(http, gateway)
    url = f"{gateway.url}{ISSUING}/{ymid}"
    async with http.request(method, url, headers={"Origin": ORIGIN}) as answer:
        assert answer.status == 405
        assert (await answer.json())["error"] == "method_not_allowed"
        assert "GET" in answer.headers["Allow"]


# -- the issuing endpoint: bodies ---------------------------------------------------------------


def _nested(depth: int) -> bytes:
    return b'{"init_data": ' + b"[" * depth + b"]" * depth + b"}"


@pytest.mark.parametrize(
    "body",
    [
        pytest.param(b"", id="empty"),
        pytest.param(b"null", id="null"),
        pytest.param(b"[]", id="array"),
        pytest.param(b'[{"init_data": "x"}]', id="array-of-the-object"),
        pytest.param(b"42", id="number"),
        pytest.param(b'"init_data"', id="string"),
        pytest.param(b'{"init_data": 42}', id="init-data-a-number"),
        pytest.param(b'{"init_data": null}', id="init-data-null"),
        pytest.param(b'{"init_data": ["a"]}', id="init-data-an-array"),
        pytest.param(_nested(5000), id="nested-5000-deep"),
        pytest.param(b'{"init_data": "\xff\xfe"}', id="invalid-utf8"),
        pytest.param(b'{"init_data": "\\ud800"}', id="lone-surrogate-escape"),
        pytest.param(b'{"init_data": NaN}', id="nan"),
        pytest.param(b'{"init_data": "x"', id="truncated"),
        pytest.param(b"\xef\xbb\xbf{}", id="bom-and-empty-object"),
    ],
)
async def test_a_body_that_is_not_an_init_data_object_is_400_body_invalid(
    start_upstream, start_gateway, tmp_path, caplog, body: bytes
) -> None:
    caplog.set_level(logging.INFO)
    gateway = await started(start_gateway, start_upstream(), tmp_path)
    answer = await raw_exchange(port_of(gateway), raw_post(body))
    assert (answer.status, answer.json()["error"]) == (400, "body_invalid")
    assert answer.headers["access-control-allow-origin"] == ORIGIN  # the page may read why
    refused = {"route": "tapper", "reason": "body_invalid"}
    assert metric(gateway, "gateway_ymid_requests_refused_total", **refused) == 1
    assert issued_count(gateway) == 0
    no_error_lines(caplog)


@pytest.mark.parametrize(
    "placement",
    [{"name": "level_end"}, ["level_end"], 7, True],
    ids=["object", "array", "number", "bool"],
)
async def test_a_placement_that_is_not_a_string_is_400_body_invalid(
    start_upstream, start_gateway, http, tmp_path, placement: Any
) -> None:
    gateway = await started(start_gateway, start_upstream(), tmp_path, placements=["level_end"])
    code, _, answer = await ask(http, gateway, {"init_data": init_data(), "placement": placement})
    assert (code, answer["error"]) == (400, "body_invalid")
    assert "placement" in answer["detail"]


@pytest.mark.parametrize(
    "placement",
    ["", "Level_End", "level_end ", "x" * 10_000, "level_end\x00"],
    ids=["empty", "other-case", "trailing-space", "very-long", "nul"],
)
async def test_a_placement_not_listed_exactly_is_refused_and_never_echoed(
    start_upstream, start_gateway, http, tmp_path, caplog, placement: str
) -> None:
    """An empty placement is not "no placement": the frontend meant to bind one, and an
    unbound ymid would pay at every placement."""
    caplog.set_level(logging.INFO)
    gateway = await started(start_gateway, start_upstream(), tmp_path, placements=["level_end"])
    code, _, answer = await ask(http, gateway, {"init_data": init_data(), "placement": placement})
    assert (code, answer.get("error")) == (400, "placement_unknown"), answer
    if len(placement) > 100:
        logged = "".join(str(vars(record)) for record in caplog.records)
        assert placement[:100] not in logged + json.dumps(answer)


async def test_a_body_over_16_kb_is_413_however_it_is_framed(
    start_upstream, start_gateway, tmp_path
) -> None:
    gateway = await started(start_gateway, start_upstream(), tmp_path)
    port = port_of(gateway)
    # declared larger than the limit: refused unread
    declared = await raw_exchange(
        port,
        b"POST /ymid/tapper HTTP/1.1\r\nHost: gw\r\nConnection: close\r\nOrigin: "
        + ORIGIN.encode()
        + b"\r\nContent-Length: 1000000\r\n\r\n{}",
    )
    assert (declared.status, declared.json()["error"]) == (413, "body_too_large")
    # chunked, no length declared: counted as it arrives
    piece = b"x" * 4096
    chunks = b"".join(b"%x\r\n%s\r\n" % (len(piece), piece) for _ in range(5))
    chunked = await raw_exchange(
        port,
        b"POST /ymid/tapper HTTP/1.1\r\nHost: gw\r\nConnection: close\r\nOrigin: "
        + ORIGIN.encode()
        + b"\r\nTransfer-Encoding: chunked\r\n\r\n"
        + chunks
        + b"0\r\n\r\n",
    )
    assert (chunked.status, chunked.json()["error"]) == (413, "body_too_large")


async def test_a_content_length_shorter_than_the_body_issues_nothing(
    start_upstream, start_gateway, tmp_path, caplog
) -> None:
    """The declared 10 bytes are no JSON object, and the rest is no request: aiohttp's parser
    refuses the rest before the first is answered, and the connection is closed."""
    caplog.set_level(logging.INFO)
    gateway = await started(start_gateway, start_upstream(), tmp_path)
    body = json.dumps({"init_data": init_data()}).encode()
    request = raw_post(body).replace(b"Content-Length: %d" % len(body), b"Content-Length: 10")
    answer = await raw_exchange(port_of(gateway), request)
    assert answer.status == 400
    assert answer.json().get("error") in ("body_invalid", "malformed request")
    assert b"ymid" not in answer.body
    assert issued_count(gateway) == 0
    no_error_lines(caplog)


@pytest.mark.slow
@pytest.mark.parametrize(
    "unfinished",
    [
        pytest.param(b"Content-Length: 1000\r\n\r\n" + b'{"init_data": "', id="length-lies"),
        pytest.param(b'Transfer-Encoding: chunked\r\n\r\n5\r\n{"ini', id="chunked-no-end"),
    ],
)
async def test_a_body_that_never_finishes_is_answered_or_closed_within_client_timeout(
    start_upstream, start_gateway: GatewayFactory, tmp_path, unfinished: bytes
) -> None:
    tapper = sessions_route(start_upstream().url)
    config = gateway_config(
        routes={"tapper": tapper}, store=tmp_path / "gw.db", server={"client_timeout": "300ms"}
    )
    gateway = await start_gateway(config, env=SESSIONS_ENV)
    assert gateway.config.server.client_timeout == 0.3
    reader, writer = await asyncio.open_connection("127.0.0.1", port_of(gateway))
    writer.write(
        b"POST /ymid/tapper HTTP/1.1\r\nHost: gw\r\nOrigin: "
        + ORIGIN.encode()
        + b"\r\nContent-Type: application/json\r\n"
        + unfinished
    )
    await writer.drain()
    began = time.monotonic()
    try:
        answer = await asyncio.wait_for(read_answer(reader), GUARD)
    except asyncio.IncompleteReadError as closed:  # closed without an answer: as good
        assert closed.partial == b""
    except TimeoutError:
        pytest.fail(f"the gateway held a body that never finished for more than {GUARD} s")
    else:  # an answer: a refusal, never a ymid
        assert answer.status in (400, 408), answer
    finally:
        writer.close()
    assert time.monotonic() - began < 0.3 + 2.0  # client_timeout, and room for a busy machine


# -- the issuing endpoint: initData ---------------------------------------------------------------


def _user_signed(user_json: str, auth_date: int | None = None) -> str:
    """initData whose `user` is exactly this JSON, signed with the test bot's token."""
    when = int(time.time()) if auth_date is None else auth_date
    return signed_init_data(None, when, user=user_json)


@pytest.mark.parametrize(
    ("user_json", "reason"),
    [
        ('{"id":"424242","first_name":"T"}', "init_data_malformed"),
        ('{"id":424242.0,"first_name":"T"}', "init_data_malformed"),
        ('{"id":true,"first_name":"T"}', "init_data_malformed"),
        ('{"id":-5,"first_name":"T"}', "init_data_malformed"),
        ('{"id":18446744073709551616,"first_name":"T"}', "init_data_malformed"),
        ('{"id":' + "9" * 40 + ',"first_name":"T"}', "init_data_malformed"),
        ('{"first_name":"T"}', "init_data_malformed"),
        ("not json", "init_data_malformed"),
    ],
    ids=["id-a-string", "id-a-float", "id-a-bool", "negative", "2-to-the-64", "40-digits",
         "no-id", "not-json"],
)  # fmt: skip
async def test_signed_initdata_whose_user_id_is_no_telegram_id_is_refused_not_a_500(
    start_upstream, start_gateway, http, tmp_path, caplog, user_json: str, reason: str
) -> None:
    """Signed with the bot's token, so only a holder of the token can send these: still a
    named refusal, never an exception and a traceback."""
    caplog.set_level(logging.INFO)
    gateway = await started(start_gateway, start_upstream(), tmp_path)
    code, _, answer = await ask(http, gateway, {"init_data": _user_signed(user_json)})
    assert (code, answer.get("error")) == (403, reason), answer
    assert issued_count(gateway) == 0
    no_error_lines(caplog)


async def test_a_user_id_beyond_2_to_the_63_is_issued_for_exactly_that_id(
    start_upstream, start_gateway, http, tmp_path
) -> None:
    """The ymid holds 8 unsigned bytes of user: the largest id round-trips unchanged."""
    app = start_upstream()
    gateway = await started(start_gateway, app, tmp_path)
    big = 2**64 - 1
    data = _user_signed(json.dumps({"id": big, "first_name": "T"}, separators=(",", ":")))
    code, _, answer = await ask(http, gateway, {"init_data": data})
    assert code == 200, answer
    assert await postback(http, gateway, answer["ymid"], user=str(big)) == (200, "forwarded")
    assert app.received[0].query["user_id"] == str(big)


@pytest.mark.parametrize(
    ("shift", "reason"),
    [(86_400, "init_data_expired"), (10**10, "init_data_expired")],
    ids=["a-day-ahead", "in-300-years"],
)
async def test_initdata_signed_in_the_future_is_refused_as_expired(
    start_upstream, start_gateway, http, tmp_path, caplog, shift: int, reason: str
) -> None:
    caplog.set_level(logging.INFO)
    gateway = await started(start_gateway, start_upstream(), tmp_path)
    data = signed_init_data(USER, int(time.time()) + shift)
    code, _, answer = await ask(http, gateway, {"init_data": data})
    assert (code, answer["error"]) == (403, reason)
    no_error_lines(caplog)


async def test_an_auth_date_out_of_any_calendar_is_malformed(
    start_upstream, start_gateway, http, tmp_path, caplog
) -> None:
    caplog.set_level(logging.INFO)
    gateway = await started(start_gateway, start_upstream(), tmp_path)
    for auth_date in (10**18, -1):
        data = signed_init_data(USER, auth_date)
        code, _, answer = await ask(http, gateway, {"init_data": data})
        assert (code, answer["error"]) == (403, "init_data_malformed"), auth_date
    no_error_lines(caplog)


def _with_pair(data: str, pair: str) -> str:
    return f"{data}&{pair}"


@pytest.mark.parametrize(
    ("make", "reason"),
    [
        (lambda: _with_pair(init_data(), "hash=" + "0" * 64), "init_data_malformed"),
        (lambda: _with_pair(init_data(), _user_pair(OTHER_USER)), "init_data_malformed"),
        (lambda: _with_pair(init_data(), "extra=1"), "init_data_forged"),
        (lambda: init_data().replace("user=", "usr="), "init_data_forged"),
        (lambda: quote(init_data()), "init_data_malformed"),
        (lambda: init_data().replace("&", ";"), "init_data_malformed"),
        (lambda: init_data() + "&", "init_data_malformed"),
        (lambda: " " + init_data(), "init_data_malformed"),
        (lambda: "hash=" + init_data().rpartition("hash=")[2], "init_data_malformed"),
    ],
    ids=["hash-twice", "user-twice", "unsigned-extra-field", "user-renamed", "double-encoded",
         "semicolons", "trailing-ampersand", "leading-space", "only-the-hash"],
)  # fmt: skip
async def test_initdata_altered_in_transit_gets_no_ymid(
    start_upstream, start_gateway, http, tmp_path, caplog, make, reason: str
) -> None:
    caplog.set_level(logging.INFO)
    gateway = await started(start_gateway, start_upstream(), tmp_path)
    code, _, answer = await ask(http, gateway, {"init_data": make()})
    assert (code, answer["error"]) == (403, reason)
    assert issued_count(gateway) == 0
    no_error_lines(caplog)


def _user_pair(user_id: int) -> str:
    user = json.dumps({"id": user_id, "first_name": "Test"}, separators=(",", ":"))
    return f"user={quote(user)}"


async def test_initdata_with_signed_extra_fields_and_an_uppercase_hash_proves_its_user(
    start_upstream, start_gateway, http, tmp_path
) -> None:
    """What Telegram may add (new fields, a start_param) is part of what it signed."""
    app = start_upstream()
    gateway = await started(start_gateway, app, tmp_path)
    data = signed_init_data(USER, int(time.time()), start_param="ref_1", chat_type="private")
    fields = dict(parse_qsl(data))
    upper = data.replace(fields["hash"], fields["hash"].upper())
    for sent in (data, upper):
        code, _, answer = await ask(http, gateway, {"init_data": sent})
        assert code == 200, answer
        assert await postback(http, gateway, answer["ymid"]) == (200, "forwarded")
    assert [r.query["user_id"] for r in app.received] == [str(USER), str(USER)]


async def test_duplicate_init_data_keys_bind_one_proven_user_never_an_unproven_one(
    start_upstream, start_gateway, tmp_path
) -> None:
    """JSON with `init_data` twice: whichever the gateway reads, it must be the one it
    checked (never check one and bind the other)."""
    app = start_upstream()
    gateway = await started(start_gateway, app, tmp_path)
    good = json.dumps(init_data())
    forged = json.dumps(init_data().replace(str(USER), str(OTHER_USER)))
    for body in (f'{{"init_data": {good}, "init_data": {forged}}}',
                 f'{{"init_data": {forged}, "init_data": {good}}}'):  # fmt: skip
        answer = await raw_exchange(port_of(gateway), raw_post(body.encode()))
        if answer.status == 200:
            ymid = answer.json()["ymid"]
            async with aiohttp.ClientSession() as http:
                assert await postback(http, gateway, ymid) == (200, "forwarded")
        else:
            assert answer.json()["error"] in ("init_data_forged", "body_invalid")
    assert {r.query["user_id"] for r in app.received} <= {str(USER)}


# -- the issuing endpoint: origins and preflights ------------------------------------------------


@pytest.mark.parametrize(
    "origin",
    [
        "null",
        "",
        "https://miniapp.example.evil.com",
        "https://evil.com/https://miniapp.example",
        "HTTPS://MINIAPP.EXAMPLE",
        "https://miniapp.example/",
        "https://miniapp.example:443",
        "https://miniapp.example:8443",
        "http://miniapp.example",
        "https://miniapp.example.",
        "https://xn--miniapp-.example",
    ],
)
async def test_an_origin_not_exactly_listed_is_refused_before_any_work(
    start_upstream, start_gateway, tmp_path, caplog, origin: str
) -> None:
    caplog.set_level(logging.INFO)
    gateway = await started(start_gateway, start_upstream(), tmp_path)
    body = json.dumps({"init_data": init_data()}).encode()
    answer = await raw_exchange(port_of(gateway), raw_post(body, origin=origin))
    assert (answer.status, answer.json()["error"]) == (403, "origin_not_allowed")
    assert "access-control-allow-origin" not in answer.headers
    assert answer.headers["vary"] == "Origin"
    assert issued_count(gateway) == 0
    if origin.strip():  # the log line does not repeat what a stranger sent
        lines = [vars(r) for r in caplog.records if r.getMessage() == "ymid request refused"]
        assert [line["origin"] for line in lines] == ["(not listed)"]


@pytest.mark.parametrize(
    "headers",
    [
        {"Origin": ORIGIN, "Access-Control-Request-Method": "PUT"},
        {"Origin": ORIGIN, "Access-Control-Request-Method": "GET"},
        {"Origin": ORIGIN, "Access-Control-Request-Method": "post"},
        {"Origin": ORIGIN},
        {"Access-Control-Request-Method": "POST"},
        {"Origin": "https://evil.example", "Access-Control-Request-Method": "POST"},
    ],
    ids=["put", "get", "lowercase-post", "no-method", "no-origin", "stranger"],
)
async def test_a_preflight_for_anything_but_post_from_a_listed_origin_is_refused(
    start_upstream, start_gateway, http, tmp_path, headers: dict[str, str]
) -> None:
    gateway = await started(start_gateway, start_upstream(), tmp_path)
    async with http.options(gateway.url + ISSUING, headers=headers) as answer:
        assert answer.status == 403
        assert (await answer.json())["error"] in ("preflight_refused", "origin_not_allowed")
        assert "Access-Control-Allow-Methods" not in answer.headers


async def test_a_preflight_asking_for_other_headers_is_allowed_only_content_type(
    start_upstream, start_gateway, http, tmp_path
) -> None:
    gateway = await started(start_gateway, start_upstream(), tmp_path)
    headers = {
        "Origin": ORIGIN,
        "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "authorization, x-telegram-init-data",
    }
    async with http.options(gateway.url + ISSUING, headers=headers) as answer:
        assert answer.status == 204
        assert answer.headers["Access-Control-Allow-Headers"] == "Content-Type"
        assert "Access-Control-Allow-Credentials" not in answer.headers


# -- the issuing endpoint: rate limits ------------------------------------------------------------


async def test_x_forwarded_for_from_an_untrusted_peer_does_not_change_the_address_limit(
    start_upstream, start_gateway, sender: Sender, tmp_path
) -> None:
    gateway = await started(start_gateway, start_upstream(), tmp_path, per_address_per_minute=2)
    client = sender("127.0.0.41")
    answers = []
    for index in range(3):
        headers = {"Origin": ORIGIN, "X-Forwarded-For": f"198.51.100.{index + 1}"}
        body = {"init_data": init_data(USER + index)}
        async with client.post(gateway.url + ISSUING, json=body, headers=headers) as answer:
            answers.append((answer.status, (await answer.json()).get("error")))
    assert answers == [(200, None), (200, None), (429, "rate_limited_address")]


async def test_many_users_from_one_address_and_one_user_from_many_are_both_limited(
    start_upstream, start_gateway, sender: Sender, tmp_path
) -> None:
    gateway = await started(
        start_gateway,
        start_upstream(),
        tmp_path,
        per_user_per_minute=3,
        per_address_per_minute=4,
    )
    crowd = sender("127.0.0.51")
    seen = [(await ask(crowd, gateway, {"init_data": init_data(9000 + n)}))[0] for n in range(6)]
    assert seen == [200, 200, 200, 200, 429, 429]
    roaming = [
        await ask(sender(f"127.0.0.{60 + n}"), gateway, {"init_data": init_data(OTHER_USER)})
        for n in range(5)
    ]
    assert [(code, body.get("error")) for code, _, body in roaming] == [
        (200, None),
        (200, None),
        (200, None),
        (429, "rate_limited_user"),
        (429, "rate_limited_user"),
    ]
    assert all(int(headers["Retry-After"]) >= 1 for code, headers, _ in roaming if code == 429)


async def test_a_reload_does_not_refill_the_rate_limits(
    start_upstream, start_gateway: GatewayFactory, sender: Sender, tmp_path
) -> None:
    """A config reload (the file watcher, a SIGHUP) is not a reason to forget who asked: else
    every reload hands every address and every user a fresh burst."""
    app = start_upstream()
    text = sessions_config(app.url, tmp_path / "gw.db", per_user_per_minute=1)
    gateway = await start_gateway(text, env=SESSIONS_ENV)
    client = sender("127.0.0.71")
    assert (await ask(client, gateway, {"init_data": init_data()}))[0] == 200
    assert (await ask(client, gateway, {"init_data": init_data()}))[2]["error"] == (
        "rate_limited_user"
    )
    await gateway.runtime.apply(parse_config(text, {"MONETAG_SECRET": SECRET, **SESSIONS_ENV}))
    code, _, answer = await ask(client, gateway, {"init_data": init_data()})
    assert (code, answer.get("error")) == (429, "rate_limited_user")


# -- the status endpoint ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("suffix", "status_code", "reason"),
    [
        ("/", 404, "ymid_not_issued"),
        ("/..", 404, None),
        ("/%2E%2E", 404, "ymid_not_issued"),
        ("/a%2Fb", 404, "ymid_not_issued"),
        ("/" + "A" * 5000, 404, "ymid_not_issued"),
        ("/%C3%A9", 404, "ymid_not_issued"),
        ("/%00", 404, "ymid_not_issued"),
        ("/%FF", 404, "ymid_not_issued"),
    ],
    ids=["empty", "dot-dot", "encoded-dot-dot", "encoded-slash", "very-long", "non-ascii",
         "nul", "not-utf8"],
)  # fmt: skip
async def test_a_status_path_that_is_no_ymid_is_404(
    start_upstream, start_gateway, tmp_path, caplog, suffix: str, status_code: int, reason
) -> None:
    caplog.set_level(logging.INFO)
    gateway = await started(start_gateway, start_upstream(), tmp_path)
    answer = await raw_exchange(port_of(gateway), raw_get(ISSUING + suffix))
    assert answer.status == status_code
    if reason is not None:
        assert answer.json()["error"] == reason
    no_error_lines(caplog)


async def test_a_ymid_spelled_another_way_has_no_status(
    start_upstream, start_gateway, http, tmp_path
) -> None:
    """One text per ymid: percent-encoded, padded, or with a path below it, it is not ours."""
    gateway = await started(start_gateway, start_upstream(), tmp_path)
    ymid = await issue(http, gateway)
    port = port_of(gateway)
    for spelled in (f"%{ord(ymid[0]):02X}{ymid[1:]}", ymid + "==", ymid + "%20", ymid.lower()):
        answer = await raw_exchange(port, raw_get(f"{ISSUING}/{spelled}"))
        assert answer.status == 404, spelled
        assert answer.json()["error"] in ("ymid_not_issued", "ymid_forged"), spelled
    below = await raw_exchange(port, raw_get(f"{ISSUING}/{ymid}/x"))
    assert below.status == 404
    raw_bytes = await raw_exchange(port, raw_get(f"{ISSUING}/".encode() + "é".encode()))
    assert raw_bytes.status == 400  # not valid in a request target at all


@pytest.mark.parametrize(
    "wait",
    ["-1", "-1s", "1e9", "nan", "inf", "", "0x10", "10 s", "1s1", "\u0661\u0660"],
    ids=["negative", "negative-s", "exponent", "nan", "inf", "empty", "hex", "space",
         "trailing-garbage", "arabic-digits"],
)  # fmt: skip
async def test_a_wait_that_is_no_duration_is_400_wait_invalid(
    start_upstream, start_gateway, http, tmp_path, wait: str
) -> None:
    gateway = await started(start_gateway, start_upstream(), tmp_path)
    ymid = await issue(http, gateway)
    url = f"{gateway.url}{ISSUING}/{ymid}?wait={quote(wait)}"
    async with http.get(url, headers={"Origin": ORIGIN}) as answer:
        assert answer.status == 400
        assert (await answer.json())["error"] == "wait_invalid"


async def test_a_wait_given_twice_is_read_once_and_a_huge_one_still_hears_the_reward(
    start_upstream, start_gateway, http, tmp_path
) -> None:
    gateway = await started(start_gateway, start_upstream(), tmp_path)
    ymid = await issue(http, gateway)
    url = f"{gateway.url}{ISSUING}/{ymid}"
    async with http.get(url + "?wait=-1&wait=1s", headers={"Origin": ORIGIN}) as answer:
        assert (answer.status, (await answer.json())["error"]) == (400, "wait_invalid")
    # a wait beyond any clock, held (at most MAX_WAIT_SECONDS) until the reward is heard
    waiting = asyncio.create_task(status(http, gateway, ymid, wait="9" * 400 + "d"))
    assert await postback(http, gateway, ymid) == (200, "forwarded")
    code, answer = await asyncio.wait_for(waiting, 10)
    assert (code, answer["state"]) == (200, "rewarded")


async def test_an_unlisted_origin_gets_no_status(
    start_upstream, start_gateway, http, tmp_path
) -> None:
    gateway = await started(start_gateway, start_upstream(), tmp_path)
    ymid = await issue(http, gateway)
    answer = await raw_exchange(
        port_of(gateway), raw_get(f"{ISSUING}/{ymid}", origin="https://evil.example")
    )
    assert (answer.status, answer.json()["error"]) == (403, "origin_not_allowed")
    assert ymid.encode() not in answer.body
    assert "access-control-allow-origin" not in answer.headers


async def test_thousands_of_status_requests_cost_a_bounded_number_of_store_reads(
    start_upstream, start_gateway, tmp_path
) -> None:
    gateway = await started(start_gateway, start_upstream(), tmp_path)
    watch = gateway.runtime.status_watch
    assert watch is not None
    reads: list[int] = []
    read = watch._read

    async def counted(ymids):  # type: ignore[no-untyped-def]
        reads.append(len(ymids))
        return await read(ymids)

    watch._read = counted
    ymids = [signed(10_000 + n, time.time() + 600) for n in range(2000)]
    connector = aiohttp.TCPConnector(limit=200)
    began = time.monotonic()
    async with aiohttp.ClientSession(connector=connector) as http:
        answers = await asyncio.gather(*(status(http, gateway, ymid) for ymid in ymids))
    elapsed = time.monotonic() - began
    assert {(code, body["state"]) for code, body in answers} == {(200, "pending")}
    assert sum(reads) >= len(ymids)  # each ymid was asked about ...
    assert len(reads) <= elapsed / 0.5 + 2  # ... in one query per half second at most


# -- two routes with sessions --------------------------------------------------------------------


def two_routes(app_url: str, store: Path, other_key: str) -> str:
    tapper = sessions_route(app_url)
    other = sessions_route(app_url, signing_keys=[other_key])
    return gateway_config(routes={"tapper": tapper, "other": other}, store=store)


async def send_postback(
    http: aiohttp.ClientSession, gateway: RunningGateway, path: str, ymid: str, **extra: str
) -> tuple[int, str]:
    params = {"uid": ymid, "event": "click", "zone": "42", "token": SECRET, **extra}
    async with http.get(gateway.url + path, params=params) as answer:
        return answer.status, answer.headers["X-Gateway-Outcome"]


@pytest.mark.parametrize(
    "other_key", ["${YMID_SIGNING_KEY}", "${OTHER_YMID_KEY}"], ids=["same-key", "other-key"]
)
async def test_a_ymid_issued_for_one_route_neither_pays_nor_shows_on_another(
    start_upstream, start_gateway: GatewayFactory, http, tmp_path, other_key: str
) -> None:
    """Two Mini Apps behind one gateway, both reading the key from the same variable as the
    docs show: a ymid route A issued must not pay on route B (its own dedup scope would pay it
    a second time) and B must not answer for it."""
    app = start_upstream()
    gateway = await start_gateway(two_routes(app.url, tmp_path / "gw.db", other_key), env=ENV)
    ymid = await issue(http, gateway)  # from /ymid/tapper
    assert await send_postback(http, gateway, "/postback/tapper", ymid) == (200, "forwarded")
    assert await send_postback(http, gateway, "/postback/other", ymid) == (403, "rejected")
    assert len(app.received) == 1
    # another key: not one of B's (ymid_not_issued); the same key: the MAC covers the route,
    # so to B it is a wrong signature (ymid_forged)
    reasons = ("ymid_not_issued", "ymid_forged")
    refused = [
        metric(gateway, "gateway_rejections_total", route="other", reason=r) for r in reasons
    ]
    assert sum(refused) == 1
    code, answer = await status(http, gateway, ymid, wait="10s")
    assert (code, answer["state"]) == (200, "rewarded")
    async with http.get(f"{gateway.url}/ymid/other/{ymid}", headers={"Origin": ORIGIN}) as other:
        assert other.status == 404
        assert (await other.json())["error"] in reasons


# -- postbacks ------------------------------------------------------------------------------


async def test_an_event_type_in_another_case_is_the_same_event_and_padding_is_refused(
    start_upstream, start_gateway, http, tmp_path
) -> None:
    app = start_upstream()
    gateway = await started(start_gateway, app, tmp_path)
    ymid = await issue(http, gateway)
    assert await postback(http, gateway, ymid, "Click") == (200, "forwarded")
    assert await postback(http, gateway, ymid, "CLICK") == (200, "duplicate")
    assert await postback(http, gateway, ymid, "click") == (200, "duplicate")
    for padded in (" click", "click ", "click\t", "cl ick"):
        assert (await postback(http, gateway, ymid, padded))[1] == "invalid", padded
    assert [r.query["event_type"] for r in app.received] == ["click"]


@pytest.mark.parametrize(
    ("sent", "outcome"),
    [
        (f"0{USER}", "forwarded"),  # leading zeros are the same number
        (f"+{USER}", "invalid"),
        (f" {USER}", "invalid"),
        (f"{USER}.0", "invalid"),
        (f"-{USER}", "invalid"),
        (str(USER + 2**64), "rejected"),  # the same low 64 bits: another user
        (str(OTHER_USER), "rejected"),
    ],
    ids=["leading-zero", "plus", "space", "decimal", "negative", "wrapped-64-bit", "other"],
)
async def test_monetags_telegram_id_pays_only_when_it_is_the_bound_user_exactly(
    start_upstream, start_gateway, http, tmp_path, sent: str, outcome: str
) -> None:
    app = start_upstream()
    gateway = await started(start_gateway, app, tmp_path)
    ymid = await issue(http, gateway)
    assert (await postback(http, gateway, ymid, user=sent))[1] == outcome
    # whatever came of it, the app was told only the verified user, once at most
    assert [r.query.getall("user_id") for r in app.received] in ([], [[str(USER)]])
    assert (await postback(http, gateway, ymid, user=str(USER)))[1] == (
        "duplicate" if outcome == "forwarded" else "forwarded"
    )


async def test_a_sender_cannot_name_the_verified_user_field_itself(
    start_upstream, start_gateway, http, tmp_path
) -> None:
    app = start_upstream()
    gateway = await started(start_gateway, app, tmp_path)
    ymid = await issue(http, gateway)
    assert await postback(http, gateway, ymid, user_id=str(OTHER_USER)) == (200, "forwarded")
    assert app.received[0].query.getall("user_id") == [str(USER)]


@pytest.mark.parametrize(
    ("query", "outcome"),
    [
        ("placement=Level_End", "rejected"),
        ("placement=level_end%20", "rejected"),
        ("placement=level_end&placement=shop", "invalid"),
        ("placement=shop&placement=level_end", "invalid"),
        ("placement=%FF", "invalid"),
        ("placement=level_end&placement=level_end", "forwarded"),
    ],
    ids=["other-case", "trailing-space", "twice-first-right", "twice-last-right", "not-utf8",
         "twice-the-same"],
)  # fmt: skip
async def test_the_placement_a_postback_names_must_be_the_bound_one_exactly(
    start_upstream, start_gateway, http, tmp_path, caplog, query: str, outcome: str
) -> None:
    caplog.set_level(logging.INFO)
    app = start_upstream()
    gateway = await started(start_gateway, app, tmp_path, placements=["level_end", "shop"])
    ymid = await issue(http, gateway, placement="level_end")
    target = f"{gateway.url}/postback/tapper?uid={ymid}&event=click&zone=42&token={SECRET}&{query}"
    async with http.get(URL(target, encoded=True)) as answer:
        assert answer.headers["X-Gateway-Outcome"] == outcome
    placements = [r.query.getall("request_var", []) for r in app.received]
    assert placements == ([["level_end"]] if outcome == "forwarded" else [])
    no_error_lines(caplog)


async def test_concurrent_identical_postbacks_of_one_ymid_forward_it_once(
    start_upstream, start_gateway, http, tmp_path
) -> None:
    app = start_upstream()
    gateway = await started(start_gateway, app, tmp_path)
    ymid = await issue(http, gateway)
    outcomes = await asyncio.gather(*(postback(http, gateway, ymid) for _ in range(25)))
    assert sorted(outcomes).count((200, "forwarded")) == 1
    assert {outcome for _, outcome in outcomes} <= {"forwarded", "duplicate"}
    assert len(app.received) == 1


async def test_log_only_forwards_a_forged_ymid_with_the_senders_own_unverified_user(
    start_upstream, start_gateway, http, tmp_path
) -> None:
    """log_only pays as before sessions (docs/sessions.md, "Rolling it out"): the app gets
    the telegram_id the sender named, not one the gateway verified, and the gateway says so
    in its metric and record. A genuine ymid still has its verified user put in."""
    app = start_upstream()
    gateway = await started(start_gateway, app, tmp_path, mode="log_only")
    forged = signed(USER, time.time() + 600, OTHER_SIGNING_KEY)
    assert await postback(http, gateway, forged, user=str(OTHER_USER)) == (200, "forwarded")
    assert app.received[0].query.getall("user_id") == [str(OTHER_USER)]
    let_in = {"route": "tapper", "result": "ymid_not_issued", "mode": "log_only"}
    assert metric(gateway, "gateway_ymid_checks_total", **let_in) == 1
    (line,) = [r for r in gateway.runtime.journal.recent() if r.record.route == "tapper"]
    assert line.record.ymid_check == "ymid_not_issued"
    genuine = await issue(http, gateway)
    assert await postback(http, gateway, genuine) == (200, "forwarded")
    assert app.received[1].query.getall("user_id") == [str(USER)]


# -- secrets ---------------------------------------------------------------------------------


async def test_no_secret_reaches_an_answer_or_a_log_line_under_hostile_requests(
    start_upstream, start_gateway, http, tmp_path, caplog, capsys
) -> None:
    caplog.set_level(logging.DEBUG)
    gateway = await started(start_gateway, start_upstream(), tmp_path, placements=["shop"])
    port = port_of(gateway)
    good = init_data()
    fields = dict(parse_qsl(good))
    hashes = [fields["hash"]]
    shown: list[bytes] = []
    hostile_bodies = [
        {"init_data": good + "&hash=" + fields["hash"]},
        {"init_data": good.replace(str(USER), str(OTHER_USER))},
        {"init_data": good, "placement": SIGNING_KEY},
        {"init_data": SIGNING_KEY + TEST_BOT_TOKEN},
        {"init_data": good, "placement": {"k": SECRET}},
        [good],
    ]
    for body in hostile_bodies:
        answer = await raw_exchange(port, raw_post(json.dumps(body).encode()))
        shown.append(answer.body + json.dumps(answer.headers).encode())
    for body in (b'{"init_data": "' + TEST_BOT_TOKEN.encode() + b'\xff"}',):
        answer = await raw_exchange(port, raw_post(body))
        shown.append(answer.body)
    ymid = await issue(http, gateway)
    async with http.get(
        f"{gateway.url}/postback/tapper",
        params={"uid": ymid, "event": "click", "token": SECRET, "user": str(OTHER_USER)},
    ) as answer:
        shown.append(await answer.read())
    status_answer = await raw_exchange(port, raw_get(f"{ISSUING}/{quote(SIGNING_KEY)}"))
    shown.append(status_answer.body)
    lines = "".join(str(vars(record)) for record in caplog.records)
    everything = lines + capsys.readouterr().out + b"".join(shown).decode("utf-8", "replace")
    assert "ymid request refused" in everything  # the lines were there to read
    for secret in (TEST_BOT_TOKEN, SIGNING_KEY, SECRET, *hashes):
        assert secret not in everything, secret[:6]


# -- reloading signing keys (a gateway process) ------------------------------------------------


def _keys_config(ports: tuple[int, int], store: Path, app_url: str, keys: list[str]) -> str:
    public, admin = ports
    server = {
        "listen": f"127.0.0.1:{public}",
        "admin_listen": f"127.0.0.1:{admin}",
        "reload_interval": 0,
        "shutdown_grace": "3s",
    }
    tapper = sessions_route(app_url, signing_keys=keys)
    return gateway_config(routes={"tapper": tapper}, server=server, store=store)


def _ask_process(port: int) -> str:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        body = json.dumps({"init_data": init_data()})
        headers = {"Content-Type": "application/json", "Origin": ORIGIN}
        connection.request("POST", ISSUING, body, headers)
        answer = connection.getresponse()
        payload = json.loads(answer.read())
        assert answer.status == 200, payload
        ymid: str = payload["ymid"]
        return ymid
    finally:
        connection.close()


def _key_id(ymid: str) -> int:
    return base64.urlsafe_b64decode(ymid + "=" * (-len(ymid) % 4))[1]


def _reloads(gateway: Gateway) -> float:
    found = re.search(r'gateway_config_reloads_total\{result="success"\} (\S+)', gateway.metrics())
    return float(found.group(1)) if found else 0.0


def _reload(gateway: Gateway, config: Path, text: str) -> None:
    before = _reloads(gateway)
    config.write_text(text, encoding="utf-8")
    gateway.process.send_signal(signal.SIGHUP)
    eventually(lambda: _reloads(gateway) > before, 10)


@pytest.mark.process
def test_signing_keys_rotate_by_reload_old_ymids_verify_until_their_key_is_removed(
    harness: Harness, start_upstream: UpstreamFactory, tmp_path: Path
) -> None:
    app = start_upstream()
    ports = (free_port(), free_port())
    store = tmp_path / "gw.db"
    config = tmp_path / "config.yaml"

    def keys(*names: str) -> str:
        return _keys_config(ports, store, app.url, [f"${{{name}}}" for name in names])

    config.write_text(keys("YMID_SIGNING_KEY"), encoding="utf-8")
    stdout, stderr = tmp_path / "gw.out", tmp_path / "gw.err"
    process = spawn_gateway(config, processes.command_env(**ENV), stdout, stderr)
    gateway = Gateway(process, Setup(config, str(store), *ports), stdout, stderr)
    harness.gateways.append(gateway)
    eventually(gateway.is_ready, 15, explain=stderr.read_text)

    old = _ask_process(ports[0])
    # the new key added first: it signs from now on, and the old one still verifies
    _reload(gateway, config, keys("OTHER_YMID_KEY", "YMID_SIGNING_KEY"))
    new = _ask_process(ports[0])
    assert _key_id(new) != _key_id(old)
    assert gateway.postback("tapper", old).outcome == "forwarded"
    # the old key removed: its ymids are no longer ours; the new key's still are
    _reload(gateway, config, keys("OTHER_YMID_KEY"))
    refused = gateway.postback("tapper", old, event="impression")
    assert (refused.status, refused.outcome) == (403, "rejected")
    assert gateway.postback("tapper", new).outcome == "forwarded"
    assert [r.query["user_id"] for r in app.received] == [str(USER), str(USER)]
    rejected = [line for line in gateway.log_lines() if line.get("outcome") == "rejected"]
    assert [(line["ymid"], line["reason"]) for line in rejected] == [(old, "ymid_not_issued")]
    output = gateway.output() + stderr.read_text()
    for secret in (SIGNING_KEY, OTHER_SIGNING_KEY, TEST_BOT_TOKEN):
        assert secret not in output
