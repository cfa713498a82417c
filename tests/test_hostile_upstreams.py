"""A broken app behind the gateway: raw upstreams that send exactly the bytes of each case, and
what the sender gets, what the log says, and whether the next postback still gets its own answer.

The rule under test: the sender always gets an answer that matches the log line, a doubtful
answer never counts as delivered, and no answer is ever taken for another event's.
"""

from __future__ import annotations

import asyncio
import gzip
from typing import Any

import aiohttp
import pytest
from prometheus_client import generate_latest

from tests.conftest import SECRET, GatewayFactory, RunningGateway, access_lines
from tests.support.gatewayconfig import gateway_config, upstream
from tests.support.metrics import metric_sum
from tests.support.rawupstream import (
    GUARD,
    OK,
    RawServer,
    Reply,
    ServerFactory,
    close_without_answer,
    drip,
    send,
    send_and_close,
    send_and_reset,
    send_later,
    send_when_told,
    until,
)
from tests.support.waiting import eventually_async

SERVICE_UNAVAILABLE = b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 4\r\n\r\nbusy"


def answer(head: str, body: bytes = b"ok") -> bytes:
    return head.replace("\n", "\r\n").encode("latin-1") + b"\r\n\r\n" + body


async def gateway_before(
    server: RawServer, start_gateway: GatewayFactory, **settings: Any
) -> RunningGateway:
    """A gateway whose route has no retries, in front of `server`; `settings` are the
    upstream's other keys (keep_alive=...)."""
    app = upstream(str(server.url("/postback")), retries=0, **settings)
    return await start_gateway(gateway_config(app))


async def postback(
    http: aiohttp.ClientSession, gateway: RunningGateway, ymid: str
) -> tuple[int, str, bytes, dict[str, str]]:
    params = {"uid": ymid, "event": "click", "zone": "1", "token": SECRET}
    async with http.get(gateway.postback_url(), params=params) as response:
        return (
            response.status,
            response.headers["X-Gateway-Outcome"],
            await response.read(),
            dict(response.headers),
        )


def the_log_agrees(capsys: Any, answers: list[tuple[int, str, bytes, dict[str, str]]]) -> list[Any]:
    lines = access_lines(capsys)
    assert [(line["status"], line["outcome"]) for line in lines] == [a[:2] for a in answers]
    return lines


# -- answers that are not clean HTTP: 502, never "delivered" ----------------------------------


@pytest.mark.parametrize(
    "raw",
    [
        pytest.param(
            answer("HTTP/1.1 200 OK\nContent-Length: 2\nContent-Length: 3"),
            id="two-different-content-lengths",
        ),
        pytest.param(
            answer(
                "HTTP/1.1 200 OK\nContent-Length: 2\nTransfer-Encoding: chunked",
                b"2\r\nok\r\n0\r\n\r\n",
            ),
            id="content-length-and-chunked",
        ),
        pytest.param(
            answer(
                "HTTP/1.1 200 OK\nTransfer-Encoding: chunked\nTransfer-Encoding: chunked",
                b"2\r\nok\r\n0\r\n\r\n",
            ),
            id="two-transfer-encodings",
        ),
        pytest.param(
            answer("HTTP/1.1 200 OK\nTransfer-Encoding: gzip, chunked", b"2\r\nok\r\n0\r\n\r\n"),
            id="transfer-encoding-we-never-asked-for",
        ),
        pytest.param(b"HTTP/1.1 200 OK\nContent-Length: 2\n\nok", id="bare-lf-line-ends"),
        pytest.param(
            answer(
                "HTTP/1.1 101 Switching Protocols\nUpgrade: websocket\nConnection: Upgrade", b""
            ),
            id="switching-protocols",
        ),
        pytest.param(answer("HTTP/1.1 20 OK\nContent-Length: 2"), id="two-digit-status"),
        pytest.param(
            answer("HTTP/1.1 200 OK\nContent-Length: 2\nX-Folded: a\n b"), id="folded-header-line"
        ),
        pytest.param(
            answer("HTTP/1.1 200 OK\nContent-Type: text/plain\nX: \x00\nContent-Length: 2"),
            id="nul-in-a-header",
        ),
        pytest.param(
            b"HTTP/1.1 200 OK\r\nContent-Type: text/\nplain\r\nContent-Length: 2\r\n\r\nok",
            id="bare-lf-inside-content-type",
        ),
        pytest.param(
            answer("HTTP/1.1 200 OK\nX-Pad: " + "p" * 70_000 + "\nContent-Length: 2"),
            id="header-block-over-64k",
        ),
    ],
)
async def test_unclean_answer_is_502_logged_as_such_and_never_delivered(
    raw: bytes,
    start_server: ServerFactory,
    start_gateway: GatewayFactory,
    http: aiohttp.ClientSession,
    capsys: Any,
) -> None:
    server = await start_server(send(raw), default=send(OK))
    gateway = await gateway_before(server, start_gateway)
    capsys.readouterr()

    first = await postback(http, gateway, "u1")
    again = await postback(http, gateway, "u1")  # the key was released: a retry goes through

    assert first[:2] == (502, "upstream_error")
    assert again[:2] == (200, "forwarded")
    lines = the_log_agrees(capsys, [first, again])
    assert lines[0]["reason"] == "upstream_bad_response"
    assert len(server.accepted) == 2  # the doubtful connection was never used again


# -- bytes nobody asked for never become the next event's answer -------------------------------


async def test_second_answer_glued_to_the_first_is_not_the_next_events_answer(
    start_server: ServerFactory,
    start_gateway: GatewayFactory,
    http: aiohttp.ClientSession,
    capsys: Any,
) -> None:
    glued = OK + b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nstale"
    server = await start_server(send(glued), send(SERVICE_UNAVAILABLE))
    gateway = await gateway_before(server, start_gateway)
    capsys.readouterr()

    answers = [await postback(http, gateway, "u1"), await postback(http, gateway, "u2")]

    assert answers[0][:3] == (200, "forwarded", b"ok")
    assert answers[1][:2] == (502, "upstream_error")  # u2 got the app's own 503, not "stale"
    assert len(server.accepted) == 2
    the_log_agrees(capsys, answers)


async def test_late_second_answer_is_not_taken_for_the_next_event(
    start_server: ServerFactory,
    start_gateway: GatewayFactory,
    http: aiohttp.ClientSession,
) -> None:
    stale = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nstale"
    server = await start_server(send_when_told(OK, stale), send(SERVICE_UNAVAILABLE))
    gateway = await gateway_before(server, start_gateway)

    first = await postback(http, gateway, "u1")
    (connection,) = server.accepted
    connection.go.set()  # the stale answer arrives while the connection sits idle
    await until(connection.client_closed)  # the gateway let go of the connection
    second = await postback(http, gateway, "u2")

    assert first[:3] == (200, "forwarded", b"ok")
    assert second[:2] == (502, "upstream_error")  # the app's own 503 for u2
    assert len(server.accepted) == 2


async def test_late_answer_after_a_delay_is_not_taken_for_the_next_event(
    start_server: ServerFactory,
    start_gateway: GatewayFactory,
    http: aiohttp.ClientSession,
) -> None:
    stale = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nstale"
    server = await start_server(send_later(OK, stale, 0.05), send(SERVICE_UNAVAILABLE))
    gateway = await gateway_before(server, start_gateway)

    first = await postback(http, gateway, "u1")
    await until(server.accepted[0].client_closed)  # the late bytes made the gateway let go
    second = await postback(http, gateway, "u2")

    assert (first[:2], second[:2]) == ((200, "forwarded"), (502, "upstream_error"))
    assert len(server.accepted) == 2


# -- what is passed back to the sender is always writable ----------------------------------------


@pytest.mark.parametrize(
    ("content_type", "passed_on"),
    [
        pytest.param(b"text/plain; charset=utf-8", "text/plain; charset=utf-8", id="normal"),
        pytest.param(b"text/plain\xff\xfe", None, id="8-bit-bytes-dropped"),
        pytest.param(b"t" * 300, None, id="over-long-dropped"),
    ],
)
async def test_content_type_is_passed_on_only_when_it_is_plain_text(
    content_type: bytes,
    passed_on: str | None,
    start_server: ServerFactory,
    start_gateway: GatewayFactory,
    http: aiohttp.ClientSession,
    capsys: Any,
) -> None:
    raw = b"HTTP/1.1 200 OK\r\nContent-Type: " + content_type + b"\r\nContent-Length: 2\r\n\r\nok"
    server = await start_server(send(raw))
    gateway = await gateway_before(server, start_gateway)
    capsys.readouterr()

    status, outcome, body, headers = await postback(http, gateway, "u1")

    assert (status, outcome, body) == (200, "forwarded", b"ok")
    assert headers.get("Content-Type", "application/octet-stream") == (
        passed_on or "application/octet-stream"
    )
    the_log_agrees(capsys, [(status, outcome, body, headers)])


async def test_a_huge_answer_is_cut_and_its_connection_closed(
    start_server: ServerFactory,
    start_gateway: GatewayFactory,
    http: aiohttp.ClientSession,
) -> None:
    big = b"HTTP/1.1 200 OK\r\nContent-Length: 1000000\r\n\r\n" + b"x" * 1_000_000
    server = await start_server(send(big), default=send(OK))
    gateway = await gateway_before(server, start_gateway)

    first = await postback(http, gateway, "u1")
    second = await postback(http, gateway, "u2")

    assert first[:2] == (200, "forwarded")
    assert first[2] == b"x" * 65536  # the app took the event; its essay is cut
    assert second[:3] == (200, "forwarded", b"ok")
    assert len(server.accepted) == 2


# -- an app that echoes the idempotency key proves which answer is whose ----------------------


def echoing(key_of: dict[str, str] | None = None, wrong: bool = False) -> Reply:
    """Answer 200 echoing the request's X-Idempotency-Key (or another one)."""

    async def reply(connection: Any) -> None:
        head = connection.requests[-1].decode("latin-1")
        key = next(
            line.split(":", 1)[1].strip()
            for line in head.split("\r\n")
            if line.lower().startswith("x-idempotency-key:")
        )
        echoed = "0" * 32 if wrong else key
        head = f"HTTP/1.1 200 OK\r\nX-Idempotency-Key: {echoed}\r\nContent-Length: 2\r\n\r\n"
        connection.writer.write(head.encode() + b"ok")
        await connection.writer.drain()

    return reply


@pytest.mark.parametrize(
    ("wrong", "status", "outcome"),
    [
        pytest.param(False, 200, "forwarded", id="its-own-key-is-delivered"),
        pytest.param(True, 502, "upstream_error", id="another-events-key-is-not-delivered"),
    ],
)
async def test_echoed_idempotency_key_must_be_the_one_sent(
    wrong: bool,
    status: int,
    outcome: str,
    start_server: ServerFactory,
    start_gateway: GatewayFactory,
    http: aiohttp.ClientSession,
    capsys: Any,
) -> None:
    server = await start_server(echoing(wrong=wrong))
    gateway = await gateway_before(server, start_gateway)
    capsys.readouterr()

    first = await postback(http, gateway, "u1")

    assert first[:2] == (status, outcome)
    (line,) = the_log_agrees(capsys, [first])
    if wrong:
        assert "X-Idempotency-Key" in line["detail"]


# -- keep_alive: false, for apps that garble kept-alive connections ---------------------------


async def test_keep_alive_false_opens_a_connection_per_postback_and_says_so(
    start_server: ServerFactory,
    start_gateway: GatewayFactory,
    http: aiohttp.ClientSession,
) -> None:
    server = await start_server(default=send(OK))
    gateway = await gateway_before(server, start_gateway, keep_alive=False)

    answers = [await postback(http, gateway, f"u{n}") for n in range(3)]

    assert {a[:2] for a in answers} == {(200, "forwarded")}
    assert len(server.accepted) == 3
    assert all(b"\r\nConnection: close\r\n" in request for request in server.requests)
    await asyncio.wait_for(
        asyncio.gather(*(c.client_closed.wait() for c in server.accepted)), GUARD
    )


# -- a clean 2xx head is the app's decision: paid once, whatever the connection does next -----

PARTIAL_200 = b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\npartial"
CHUNKED_200 = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n7\r\npartial\r\n"
BROKEN_AFTER_A_200 = [
    pytest.param(send_and_reset(PARTIAL_200), id="reset-inside-the-body"),
    pytest.param(send_and_close(PARTIAL_200), id="closed-inside-the-body"),
    pytest.param(
        drip(PARTIAL_200, b"x" * 93, 1.0),
        id="body-dripping-at-1-byte-a-second",
        marks=pytest.mark.process,
    ),
    pytest.param(send_and_reset(CHUNKED_200), id="chunked-then-reset"),
]


@pytest.mark.parametrize("broken", BROKEN_AFTER_A_200)
@pytest.mark.slow
async def test_200_whose_connection_breaks_is_delivered_once_and_its_repeat_a_duplicate(
    broken: Reply,
    start_server: ServerFactory,
    start_gateway: GatewayFactory,
    http: aiohttp.ClientSession,
    capsys: Any,
) -> None:
    server = await start_server(broken, default=send(OK))
    # retries: 2, as shipped: before, each of these was sent three times, then three more
    # when Monetag retried the 502
    app = upstream(str(server.url("/postback")), retries=2, timeout="3s")
    gateway = await start_gateway(gateway_config(app))
    capsys.readouterr()

    first = await postback(http, gateway, "u1")
    repeat = await postback(http, gateway, "u1")

    assert first[:3] == (200, "forwarded", b"partial")
    assert repeat[:2] == (200, "duplicate")
    assert len(server.requests) == 1  # one reward
    lines = the_log_agrees(capsys, [first, repeat])
    assert lines[0]["upstream_status"] == 200
    (entry,) = [e for e in gateway.runtime.journal.recent() if e.record.outcome == "forwarded"]
    (attempt,) = entry.attempts
    assert (attempt.status, attempt.body_head) == (200, "partial")
    assert attempt.error is not None and "cut short" in attempt.error


@pytest.mark.parametrize("broken", BROKEN_AFTER_A_200)
@pytest.mark.slow
async def test_200_whose_connection_breaks_is_delivered_once_on_a_queued_route(
    broken: Reply,
    start_server: ServerFactory,
    start_gateway: GatewayFactory,
    http: aiohttp.ClientSession,
    db_path: Any,
) -> None:
    server = await start_server(broken, default=send(OK))
    app = upstream(str(server.url("/postback")), retries=0, timeout="3s")
    config = gateway_config(
        app, store=db_path, delivery="queued", queue={"retry_base": "50ms", "retry_cap": "100ms"}
    )
    gateway = await start_gateway(config)
    outbox = gateway.runtime.store.outbox  # type: ignore[union-attr]

    first = await postback(http, gateway, "u1")
    assert first[:2] == (200, "queued")

    async def delivered() -> bool:
        (listed,) = await outbox.listing(None, None, 10)
        return listed.state == "delivered"

    await eventually_async(delivered, timeout=GUARD)
    (listed,) = await outbox.listing(None, None, 10)
    assert (listed.attempts, listed.last_status) == (1, 200)
    assert len(server.requests) == 1  # before: delivered 5 times, then dead-lettered


async def test_every_request_written_to_the_app_is_an_attempt_counted_and_shown(
    start_server: ServerFactory,
    start_gateway: GatewayFactory,
    http: aiohttp.ClientSession,
) -> None:
    # u1 is answered on a kept-alive connection; u2's request is written to it and the app
    # drops it without a byte: that is an attempt, and the request goes at once on a new
    # connection, which the app also drops; then the retries (2), dropped too.
    server = await start_server(send(OK), default=close_without_answer())
    app = upstream(str(server.url("/postback")), retries=2)
    gateway = await start_gateway(gateway_config(app))

    assert (await postback(http, gateway, "u1"))[:2] == (200, "forwarded")
    second = await postback(http, gateway, "u2")

    assert second[:2] == (502, "upstream_error")
    written = len(server.requests) - 1  # u2's requests, as the app saw them
    assert written == 4  # the stale connection's, its immediate resend, two retries
    (entry,) = [e for e in gateway.runtime.journal.recent() if e.record.outcome != "forwarded"]
    assert len(entry.attempts) == written
    assert "sent again on a new connection" in (entry.attempts[0].error or "")
    assert {request.split(b"X-Idempotency-Key: ")[1][:32] for request in server.requests[1:]} == {
        server.requests[1].split(b"X-Idempotency-Key: ")[1][:32]
    }  # one event: the same key on every send
    scraped = generate_latest(gateway.runtime.metrics.registry).decode()
    assert metric_sum(scraped, "gateway_upstream_attempts_total") == written + 1


async def test_a_compressed_answer_is_passed_back_with_its_coding(
    start_server: ServerFactory,
    start_gateway: GatewayFactory,
    http: aiohttp.ClientSession,
) -> None:
    """Before: the gzip bytes went back labelled application/json, without Content-Encoding."""
    body = gzip.compress(b'{"granted": true}')
    raw = (
        b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Encoding: gzip\r\n"
        + f"Content-Length: {len(body)}\r\n\r\n".encode()
        + body
    )
    server = await start_server(send(raw))
    gateway = await gateway_before(server, start_gateway)
    params = {"uid": "u1", "event": "click", "zone": "1", "token": SECRET}
    async with http.get(gateway.postback_url(), params=params) as response:
        assert response.headers["Content-Encoding"] == "gzip"
        assert await response.json() == {"granted": True}  # the client undoes the coding
