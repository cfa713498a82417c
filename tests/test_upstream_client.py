"""The lean upstream client against raw loopback servers that write exact response bytes.

Each server reads request heads and answers with bytes a test chooses, so framing, reuse and
failure handling are checked byte for byte; it counts the connections it accepts and notes when
the client closes one. A table of hostile upstreams checks what is refused, what is answered,
and that a connection in doubt is never used again.
"""

from __future__ import annotations

import asyncio
import base64
import select
import socket
import ssl
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from yarl import URL

from gateway.forwarding.upstream_client import (
    BODY_WAIT,
    MAX_BODY_BYTES,
    MAX_HEAD_BYTES,
    Answer,
    BadResponse,
    StaleConnection,
    UpstreamClient,
    UpstreamConnectionError,
)
from tests.conftest import BOTH_LOOPS
from tests.support.processes import REPO
from tests.support.rawupstream import (
    GUARD,
    OK,
    Reply,
    answer_after,
    close_without_answer,
    drip,
    send,
    send_and_close,
    send_and_half_close,
    send_and_reset,
    send_in_pieces,
    send_later,
    send_then_stall,
    send_when_told,
    trickle,
    until,
)
from tests.support.tlscerts import Certificate, make_certificate
from tests.support.waiting import eventually_async

# The client handles transports itself (what a reused connection holds unread is asked of its
# socket), and the gateway runs it on uvloop where installed: every test runs on both loops.
pytestmark = pytest.mark.asyncio(loop_factories=BOTH_LOOPS)

TIMEOUT = 2.0  # the client's own timeout for one get, unless a test says otherwise

OK_ANSWER = Answer(200, b"ok", None)


@pytest.fixture
async def client() -> AsyncIterator[UpstreamClient]:
    upstream_client = UpstreamClient()
    yield upstream_client
    await upstream_client.close()


async def fetch(
    client: UpstreamClient,
    url: URL,
    headers: dict[str, str] | None = None,
    timeout: float = TIMEOUT,
    **options: Any,
) -> Answer:
    # In this task, not a new one (as wait_for would make): the get then reaches its pool
    # before the loop polls for I/O, on uvloop too, so a check before reuse is what decides.
    async with asyncio.timeout(timeout + GUARD):
        return await client.get(url, headers or {}, timeout, **options)


def idle_connections_open(client: UpstreamClient) -> bool:
    """Whether the client still takes any of its idle connections for open (its private pool)."""
    return any(connection.open for pool in client._idle.values() for connection in pool)


def request_head(request: bytes) -> tuple[str, list[tuple[str, str]]]:
    """The request line and the header fields, in order, of one request head."""
    assert request.endswith(b"\r\n\r\n")
    line, *fields = request[:-4].decode("latin-1").split("\r\n")
    pairs = []
    for field_line in fields:
        name, colon, value = field_line.partition(": ")
        assert colon, f"malformed request header line {field_line!r}"
        pairs.append((name, value))
    return line, pairs


# --- framing -------------------------------------------------------------------------------

CHUNKED = (
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
    b"5;x=y\r\nhello\r\n"
    b"2\r\n, \r\n"
    b'A;name="quoted"\r\n0123456789\r\n'
    b"0\r\nX-Trailer: t\r\nX-Other: u\r\n\r\n"
)

FRAMINGS = [
    pytest.param(
        b"HTTP/1.1 200 OK\r\nContent-Length: 11\r\n\r\nhello world",
        "keep",
        b"hello world",
        id="content-length",
    ),
    pytest.param(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n", "keep", b"", id="zero-length"),
    pytest.param(CHUNKED, "keep", b"hello, 0123456789", id="chunked-extensions-trailers"),
    pytest.param(b"HTTP/1.1 200 OK\r\n\r\nuntil close", "close", b"until close", id="close"),
    pytest.param(b"HTTP/1.1 200 OK\r\n\r\nuntil eof", "half", b"until eof", id="half-close"),
    pytest.param(b"HTTP/1.0 200 OK\r\n\r\nold style", "close", b"old style", id="http-1.0-close"),
]


def deliver(data: bytes, then: str, delivery: str) -> Reply:
    if delivery == "byte-by-byte":
        return trickle(data, then)
    return {"keep": send, "close": send_and_close, "half": send_and_half_close}[then](data)


@pytest.mark.parametrize("delivery", ["one-write", "byte-by-byte"])
@pytest.mark.parametrize(("response", "then", "body"), FRAMINGS)
async def test_body_is_read_exactly_as_framed(start_server, client, response, then, body, delivery):
    server = await start_server(deliver(response, then, delivery))
    answer = await fetch(client, server.url())
    assert answer == Answer(200, body, None)


@pytest.mark.parametrize(
    ("response", "status", "content_type"),
    [
        pytest.param(
            b"HTTP/1.1 200 OK\r\nContent-Type: text/plain; charset=utf-8\r\n"
            b"Content-Length: 2\r\n\r\nok",
            200,
            "text/plain; charset=utf-8",
            id="text-with-charset",
        ),
        pytest.param(
            b"HTTP/1.1 418 I'm a teapot\r\ncontent-TYPE:application/json \r\n"
            b"Content-Length: 2\r\n\r\n{}",
            418,
            "application/json",
            id="any-case-name-trimmed-value",
        ),
        pytest.param(b"HTTP/1.1 201\r\nContent-Length: 2\r\n\r\nok", 201, None, id="no-reason"),
        pytest.param(
            b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 2\r\n\r\nno",
            503,
            None,
            id="no-content-type",
        ),
    ],
)
async def test_status_and_content_type_are_returned(
    start_server, client, response, status, content_type
):
    server = await start_server(send(response))
    answer = await fetch(client, server.url())
    assert (answer.status, answer.content_type) == (status, content_type)


@pytest.mark.parametrize(
    ("response", "status"),
    [
        pytest.param(b"HTTP/1.1 204 No Content\r\n\r\n", 204, id="204"),
        pytest.param(b"HTTP/1.1 204 No Content\r\nContent-Length: 0\r\n\r\n", 204, id="204-zero"),
        pytest.param(
            b"HTTP/1.1 304 Not Modified\r\nContent-Length: 10\r\n\r\n",
            304,
            id="304-with-representation-length",
        ),
    ],
)
async def test_status_without_body_answers_at_once_and_keeps_connection(
    start_server, client, response, status
):
    server = await start_server(send(response), send(OK))
    answer = await fetch(client, server.url())
    assert answer == Answer(status, b"", None)
    # Nothing after the head was taken as a body: the same connection carries the next answer.
    assert await fetch(client, server.url()) == Answer(200, b"ok", None)
    assert len(server.accepted) == 1


@pytest.mark.parametrize(
    "interim",
    [
        pytest.param(b"HTTP/1.1 100 Continue\r\n\r\n", id="100-continue"),
        pytest.param(
            b"HTTP/1.1 103 Early Hints\r\nLink: </style.css>; rel=preload\r\n\r\n",
            id="103-early-hints",
        ),
        pytest.param(
            b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 102 Processing\r\n\r\n", id="two-interim"
        ),
    ],
)
async def test_interim_1xx_answers_are_skipped_for_the_final_one(start_server, client, interim):
    server = await start_server(send(interim + OK))
    assert await fetch(client, server.url()) == Answer(200, b"ok", None)


# --- keep-alive ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("response", "answer"),
    [
        pytest.param(OK, Answer(200, b"ok", None), id="content-length"),
        pytest.param(
            b"HTTP/1.1 200 OK\r\nConnection: keep-alive\r\nContent-Length: 2\r\n\r\nok",
            Answer(200, b"ok", None),
            id="explicit-keep-alive",
        ),
        pytest.param(
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n",
            Answer(200, b"ok", None),
            id="chunked",
        ),
        pytest.param(
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: Chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n",
            Answer(200, b"ok", None),
            id="chunked-any-case",
        ),
        pytest.param(b"HTTP/1.1 204 No Content\r\n\r\n", Answer(204, b"", None), id="204"),
    ],
)
async def test_sequential_gets_share_one_connection(start_server, client, response, answer):
    server = await start_server(default=send(response))
    for _ in range(5):
        assert await fetch(client, server.url()) == answer
    assert len(server.accepted) == 1
    assert len(server.accepted[0].requests) == 5


async def test_pool_is_kept_per_host_and_port(start_server, client):
    first = await start_server()
    second = await start_server()
    for _ in range(3):
        await fetch(client, first.url())
        await fetch(client, second.url())
    assert (len(first.accepted), len(second.accepted)) == (1, 1)


@pytest.mark.parametrize(
    "response",
    [
        pytest.param(
            b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 2\r\n\r\nok",
            id="connection-close",
        ),
        pytest.param(
            b"HTTP/1.1 200 OK\r\nconnection: Close\r\nContent-Length: 2\r\n\r\nok",
            id="connection-close-any-case",
        ),
        pytest.param(b"HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\nok", id="http-1.0"),
    ],
)
async def test_answer_forbidding_reuse_gets_a_new_connection_each_time(
    start_server, client, response
):
    # The server leaves each connection open: only the client's reading of the answer decides.
    server = await start_server(default=send(response))
    for _ in range(3):
        assert await fetch(client, server.url()) == Answer(200, b"ok", None)
    assert len(server.accepted) == 3
    for connection in server.accepted:
        await until(connection.client_closed)


async def test_idle_connection_closed_by_server_is_replaced(start_server, client):
    server = await start_server(send_and_close(OK))  # no Connection: close, closes when idle
    assert await fetch(client, server.url()) == Answer(200, b"ok", None)
    await until(server.accepted[0].server_closed)
    await eventually_async(lambda: not idle_connections_open(client))  # the client saw it
    assert await fetch(client, server.url()) == Answer(200, b"ok", None)
    assert len(server.accepted) == 2


async def test_reused_connection_dropped_without_answer_is_stale_a_new_one_is_not(
    start_server, client
):
    # The keep-alive race: the upstream drops a kept-alive connection as the client reuses it,
    # having read the request. It was written, so it is an attempt of its own: the client says
    # so (StaleConnection) and the caller, who counts attempts, sends it on a new connection.
    server = await start_server(send(OK), default=close_without_answer())
    assert await fetch(client, server.url()) == Answer(200, b"ok", None)
    with pytest.raises(StaleConnection):
        await fetch(client, server.url())
    with pytest.raises(UpstreamConnectionError) as fresh:
        await fetch(client, server.url(), fresh=True)
    assert not isinstance(fresh.value, StaleConnection)  # nothing to blame on reuse
    assert len(server.accepted) == 2
    assert len(server.requests) == 3  # every request written is one the caller counts


async def test_fresh_get_never_takes_an_idle_connection(start_server, client):
    server = await start_server()
    await fetch(client, server.url())
    await fetch(client, server.url(), fresh=True)
    assert len(server.accepted) == 2


# --- over TLS ------------------------------------------------------------------------------
# What a pooled connection holds is asked of its socket, beneath the TLS layer, and each loop
# has its own TLS transport: the checks before reuse, over TLS, on both loops.


@pytest.fixture
def certificate(tmp_path: Path) -> Certificate:
    return make_certificate(tmp_path, "upstream")


@pytest.fixture
def tls_server(certificate: Certificate) -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(certificate.cert_file, certificate.key_file)
    return context


@pytest.fixture
def tls_client(client: UpstreamClient, certificate: Certificate) -> UpstreamClient:
    client._tls = certificate.client_context()  # trusts the test's certificate only
    return client


async def test_tls_connection_is_kept_and_reused(start_server, tls_server, tls_client):
    server = await start_server(tls=tls_server)
    for _ in range(3):
        assert await fetch(tls_client, server.url()) == OK_ANSWER
    assert len(server.accepted) == 1


async def test_idle_tls_connection_closed_by_server_is_replaced(
    start_server, tls_server, tls_client
):
    server = await start_server(send_and_close(OK), tls=tls_server)
    assert await fetch(tls_client, server.url()) == OK_ANSWER
    await until(server.accepted[0].server_closed)
    await eventually_async(lambda: not idle_connections_open(tls_client))
    assert await fetch(tls_client, server.url()) == OK_ANSWER
    assert len(server.accepted) == 2


async def test_reused_tls_connection_dropped_without_answer_is_stale(
    start_server, tls_server, tls_client
):
    server = await start_server(send(OK), default=close_without_answer(), tls=tls_server)
    assert await fetch(tls_client, server.url()) == OK_ANSWER
    with pytest.raises(StaleConnection):
        await fetch(tls_client, server.url())
    assert len(server.accepted) == 1


async def test_bytes_waiting_unread_on_an_idle_tls_connection_stop_its_reuse(
    start_server, tls_server, tls_client
):
    server = await start_server(tls=tls_server)
    assert await fetch(tls_client, server.url()) == OK_ANSWER
    [idle] = idle_sockets(tls_client)
    [first] = tls_client._idle[("https", "127.0.0.1", server.port)]
    server.accepted[0].writer.write(STALE)
    readable, _, _ = select.select([idle], [], [], GUARD)  # in the socket, not yet read
    assert readable
    assert await fetch(tls_client, server.url()) == OK_ANSWER
    assert len(server.accepted) == 2
    assert not first.open  # the one in doubt was closed, not kept


# --- the request ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "path_qs",
    [
        pytest.param("/", id="root"),
        pytest.param("/cb", id="path"),
        pytest.param("/cb/a%20b?ymid=u%201%26x&event_type=click", id="encoded-path-and-query"),
        pytest.param("/cb?sub=a%2Fb&x=%2B1&y=a+b&z=%7E&empty=&flag", id="query-kept-verbatim"),
    ],
)
async def test_request_line_carries_path_and_query_as_encoded(start_server, client, path_qs):
    server = await start_server()
    await fetch(client, server.url(path_qs))
    line, _ = request_head(server.requests[0])
    assert line == f"GET {path_qs} HTTP/1.1"


@pytest.mark.parametrize(
    ("listen", "host_header"),
    [
        pytest.param("127.0.0.1", "127.0.0.1:{port}", id="ipv4-with-port"),
        pytest.param("::1", "[::1]:{port}", id="ipv6-literal-in-brackets"),
    ],
)
async def test_host_header_names_host_and_port(start_server, client, listen, host_header):
    server = await start_server(host=listen)
    assert await fetch(client, server.url()) == Answer(200, b"ok", None)
    _, fields = request_head(server.requests[0])
    assert [value for name, value in fields if name == "Host"] == [
        host_header.format(port=server.port)
    ]


async def test_given_headers_are_sent_once_each(start_server, client):
    server = await start_server()
    headers = {"User-Agent": "monetag-gateway/1", "X-Request-ID": "abc-123", "Accept": "*/*"}
    await fetch(client, server.url(), headers)
    _, fields = request_head(server.requests[0])
    assert [(name, value) for name, value in fields if name in headers] == list(headers.items())
    assert "Authorization" not in dict(fields)


@pytest.mark.parametrize(
    ("userinfo", "credentials"),
    [
        pytest.param("user:pass", b"user:pass", id="user-and-password"),
        pytest.param("u%40x:p%3Aw%20", b"u@x:p:w ", id="percent-encoded-decoded"),
        pytest.param("user", b"user:", id="user-without-password"),
    ],
)
async def test_userinfo_becomes_basic_authorization(start_server, client, userinfo, credentials):
    server = await start_server()
    url = URL(f"http://{userinfo}@127.0.0.1:{server.port}/cb", encoded=True)
    await fetch(client, url)
    _, fields = request_head(server.requests[0])
    expected = f"Basic {base64.b64encode(credentials).decode()}"
    assert [value for name, value in fields if name == "Authorization"] == [expected]
    assert dict(fields)["Host"] == f"127.0.0.1:{server.port}"  # userinfo stays out of Host


# --- errors --------------------------------------------------------------------------------


async def test_refused_connection_is_connection_error(client):
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]  # nothing listens here once the probe is closed
    with pytest.raises(UpstreamConnectionError):
        await fetch(client, URL(f"http://127.0.0.1:{port}/cb"))


@pytest.mark.parametrize(
    "reply",
    [
        pytest.param(close_without_answer(), id="no-answer"),
        pytest.param(send_and_close(b"HTTP/1.1 200"), id="partial-status-line"),
        pytest.param(send_and_close(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n"), id="no-head-end"),
        pytest.param(send_and_reset(b"HTTP/1.1 200 OK\r\nContent-Len"), id="reset-inside-head"),
    ],
)
async def test_close_before_the_head_is_complete_is_connection_error(start_server, client, reply):
    server = await start_server(reply)
    started = time.monotonic()
    with pytest.raises(UpstreamConnectionError):
        await fetch(client, server.url())
    assert time.monotonic() - started < TIMEOUT / 2  # noticed at the close, not at the timeout


# A clean head is the app's decision: whatever happens to the body, the status stands (a 200
# counted as a failure would be sent again, and paid again).
CUT_SHORT = [
    pytest.param(
        send_and_close(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\npartial"),
        b"partial",
        id="closed-inside-the-body",
    ),
    pytest.param(
        send_and_reset(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\npartial"),
        b"partial",
        id="reset-inside-the-body",
    ),
    pytest.param(
        send_and_close(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\n"),
        b"ok",
        id="chunked-closed-before-last-chunk",
    ),
    pytest.param(
        send_and_reset(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\n"),
        b"ok",
        id="chunked-reset-before-last-chunk",
    ),
    pytest.param(
        send(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\nzz\r\n"),
        b"ok",
        id="chunked-garbled-after-the-head",
    ),
    pytest.param(
        drip(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n", b"x" * 100, 0.5),
        b"x",
        id="body-dripping-past-the-wait",
        marks=pytest.mark.process,
    ),
]


@pytest.mark.parametrize(("reply", "body_so_far"), CUT_SHORT)
@pytest.mark.slow
async def test_answer_whose_body_breaks_after_a_clean_head_stands_as_it_is(
    start_server, client, reply, body_so_far
):
    server = await start_server(reply, default=send(OK))
    started = time.monotonic()
    answer = await fetch(client, server.url())
    assert (answer.status, answer.complete) == (200, False)
    assert answer.body.startswith(body_so_far) and len(answer.body) < 100
    assert time.monotonic() - started < BODY_WAIT + 0.5  # no later than the wait for the body
    await fetch(client, server.url())
    assert len(server.accepted) == 2  # the broken connection was never used again


@pytest.mark.slow
async def test_deadline_cuts_the_wait_for_the_body_too(start_server, client):
    server = await start_server(
        drip(b"HTTP/1.1 503 Busy\r\nContent-Length: 100\r\n\r\n", b"x" * 100, 0.05)
    )
    loop = asyncio.get_running_loop()
    started = time.monotonic()
    answer = await fetch(client, server.url(), deadline=loop.time() + 0.3)
    assert (answer.status, answer.complete) == (503, False)
    assert time.monotonic() - started < 0.6


@pytest.mark.slow
async def test_deadline_before_the_head_is_a_timeout(start_server, client):
    server = await start_server(answer_after(2.0))
    loop = asyncio.get_running_loop()
    started = time.monotonic()
    with pytest.raises(TimeoutError):
        await fetch(client, server.url(), timeout=5.0, deadline=loop.time() + 0.3)
    assert time.monotonic() - started < 1.0


@pytest.mark.parametrize(
    "response",
    [
        pytest.param(b"garbage\r\n\r\n", id="garbage-status-line"),
        pytest.param(b"HTTP/2 200 OK\r\n\r\n", id="http-2-status-line"),
        pytest.param(b"ICY 200 OK\r\n\r\n", id="icy-status-line"),
        pytest.param(b"HTTP/1.1 2000 OK\r\n\r\n", id="four-digit-status"),
        pytest.param(b"HTTP/1.1 abc OK\r\n\r\n", id="letters-for-status"),
        pytest.param(b"HTTP/1.1 \xb200 OK\r\nContent-Length: 0\r\n\r\n", id="superscript-status"),
        pytest.param(
            b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nno colon here\r\n\r\nok",
            id="header-line-without-colon",
        ),
        pytest.param(b"HTTP/1.1 200 OK\r\nContent-Length: two\r\n\r\nok", id="length-not-number"),
        pytest.param(b"HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\nok", id="length-negative"),
        pytest.param(
            b"HTTP/1.1 200 OK\r\nContent-Length: \xb2\r\n\r\nok", id="length-superscript-digit"
        ),
        pytest.param(
            b"HTTP/1.1 200 OK\r\nX-Big: " + b"a" * (64 * 1024 + 100),
            id="head-over-64-kib-without-end",
        ),
    ],
)
async def test_unreadable_answer_is_bad_response_at_once(start_server, client, response):
    # The server keeps the connection open: the client must decide from what it has read.
    server = await start_server(send_then_stall(response))
    started = time.monotonic()
    with pytest.raises(BadResponse):
        await fetch(client, server.url())
    assert time.monotonic() - started < TIMEOUT / 2
    await until(server.accepted[0].client_closed)


# One get in a separate process: a parser that loops forever blocks the event loop, which no
# timeout inside the loop can interrupt, so the bound is put on the process instead.
ONE_GET = """
import asyncio, sys
from yarl import URL
from gateway.forwarding.upstream_client import UpstreamClient

async def main() -> None:
    client = UpstreamClient()
    try:
        answer = await client.get(URL(sys.argv[1]), {}, 2.0)
    except Exception as error:
        print(type(error).__name__)
    else:
        print(f"answered {answer!r}")
    await client.close()

asyncio.run(main())
"""


@pytest.mark.process
@pytest.mark.parametrize(
    "size_line",
    [
        pytest.param(b"zz", id="not-hex"),
        pytest.param(b"", id="empty"),
        pytest.param(b";x=y", id="extension-without-size"),
        pytest.param(b"-7", id="negative"),
    ],
)
async def test_bad_chunk_size_after_a_clean_head_leaves_the_status_standing(
    start_server, size_line
):
    server = await start_server(
        send_then_stall(
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
            + size_line
            + b"\r\nhello\r\n0\r\n\r\n"
        )
    )
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-c", ONE_GET, str(server.url()), cwd=REPO, stdout=asyncio.subprocess.PIPE
    )
    try:
        output, _ = await asyncio.wait_for(process.communicate(), 10)
    except TimeoutError:
        process.kill()
        await process.wait()
        pytest.fail("the get never returned: its event loop is blocked")
    assert output.decode().strip() == "answered " + repr(Answer(200, b"", None, complete=False))


@pytest.mark.parametrize(
    "slow",
    [
        pytest.param(send_then_stall(), id="no-answer"),
        pytest.param(send_then_stall(b"HTTP/1.1 200 OK\r\nContent-Le"), id="half-a-head"),
    ],
)
@pytest.mark.slow
async def test_slow_answer_times_out_and_its_connection_is_dropped(start_server, client, slow):
    server = await start_server(slow, send(OK))
    started = time.monotonic()
    with pytest.raises(TimeoutError):
        await fetch(client, server.url(), timeout=0.2)
    assert time.monotonic() - started < 1.5  # the client's timeout, not the guard's
    await until(server.accepted[0].client_closed)
    assert await fetch(client, server.url()) == Answer(200, b"ok", None)
    assert len(server.accepted) == 2
    assert server.accepted[1].requests  # the answer came on the new connection


@pytest.mark.parametrize(
    ("failing", "error"),
    [
        pytest.param(send(b"garbage\r\n\r\n"), BadResponse, id="garbage-status-line"),
        pytest.param(send(b"HTTP/1.1 200 OK\r\nbad\r\n\r\n"), BadResponse, id="bad-header"),
        pytest.param(close_without_answer(), UpstreamConnectionError, id="no-answer"),
        pytest.param(
            send(
                b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nTransfer-Encoding: chunked\r\n\r\n"
                b"2\r\nok\r\n0\r\n\r\n"
            ),
            BadResponse,
            id="length-and-chunked",
        ),
    ],
)
async def test_client_answers_the_next_get_after_an_error(start_server, client, failing, error):
    server = await start_server(failing, send(OK))
    with pytest.raises(error):
        await fetch(client, server.url())
    assert await fetch(client, server.url()) == Answer(200, b"ok", None)
    assert len(server.accepted) == 2  # the failed connection was not reused


# --- hostile upstreams ---------------------------------------------------------------------


def chunked(body: bytes, size: int) -> bytes:
    """`body` in chunks of `size` bytes, with the last chunk."""
    pieces = [body[start : start + size] for start in range(0, len(body), size)]
    return b"".join(b"%x\r\n%s\r\n" % (len(piece), piece) for piece in pieces) + b"0\r\n\r\n"


STALE = b"HTTP/1.1 500 Internal Server Error\r\nContent-Length: 5\r\n\r\nstale"
BIG = bytes(range(256)) * (MAX_BODY_BYTES // 256 + 8)  # a little over the body limit
KEPT = BIG[:MAX_BODY_BYTES]


def head(*fields: bytes, status: bytes = b"200 OK") -> bytes:
    return b"HTTP/1.1 " + status + b"\r\n" + b"".join(field + b"\r\n" for field in fields) + b"\r\n"


# Each: what the upstream does on the first connection, what the first get gets, and whether
# that connection may carry the next get. The server never closes it by itself: whether it is
# reused is the client's own decision.
HOSTILE = [
    # bytes nobody asked for
    pytest.param(send(OK + STALE), OK_ANSWER, False, id="second-answer-in-same-write"),
    pytest.param(send(OK + b"\r\n"), OK_ANSWER, False, id="stray-crlf-after-answer"),
    pytest.param(
        send(OK + head(status=b"204 No Content")),
        OK_ANSWER,
        False,
        id="second-bodyless-answer-in-same-write",
    ),
    pytest.param(send_later(OK, STALE, 0.05), OK_ANSWER, False, id="second-answer-50-ms-later"),
    pytest.param(send_when_told(OK, STALE), OK_ANSWER, False, id="answer-sent-while-idle"),
    pytest.param(send_when_told(OK, b"\r\n"), OK_ANSWER, False, id="crlf-sent-while-idle"),
    pytest.param(
        send(head(b"Content-Length: 2", status=b"204 No Content") + b"ok"),
        Answer(204, b"", None),
        False,
        id="204-followed-by-a-body",
    ),
    # framing that can be read two ways (llhttp refuses these by itself)
    pytest.param(
        send(head(b"Content-Length: 2", b"Content-Length: 5") + b"ok"),
        BadResponse,
        False,
        id="two-different-content-lengths",
    ),
    pytest.param(
        send(head(b"Content-Length: 2", b"Content-Length: 2") + b"ok"),
        BadResponse,
        False,
        id="two-equal-content-lengths",
    ),
    pytest.param(
        send(head(b"Content-Length: 2", b"Transfer-Encoding: chunked") + b"2\r\nok\r\n0\r\n\r\n"),
        BadResponse,
        False,
        id="content-length-then-transfer-encoding",
    ),
    pytest.param(
        send(head(b"Transfer-Encoding: chunked", b"Content-Length: 2") + b"2\r\nok\r\n0\r\n\r\n"),
        BadResponse,
        False,
        id="transfer-encoding-then-content-length",
    ),
    # Transfer-Encoding other than one plain `chunked` (llhttp accepts these: refused here)
    pytest.param(
        send(
            head(b"Transfer-Encoding: chunked", b"Transfer-Encoding: chunked")
            + b"2\r\nok\r\n0\r\n\r\n"
        ),
        BadResponse,
        False,
        id="two-transfer-encoding-fields",
    ),
    pytest.param(
        send(head(b"Transfer-Encoding: gzip, chunked") + b"2\r\nok\r\n0\r\n\r\n"),
        BadResponse,
        False,
        id="transfer-encoding-gzip-chunked",
    ),
    pytest.param(
        send(head(b"Transfer-Encoding: gzip") + b"ok"),
        BadResponse,
        False,
        id="transfer-encoding-gzip-until-close",
    ),
    pytest.param(
        send(head(b"Transfer-Encoding: chunked, identity") + b"ok"),
        BadResponse,
        False,
        id="transfer-encoding-chunked-not-last",
    ),
    # line ends and header lines (llhttp)
    pytest.param(
        send(b"HTTP/1.1 200 OK\nContent-Length: 2\n\nok"), BadResponse, False, id="bare-lf"
    ),
    pytest.param(
        send(b"HTTP/1.1 200 OK\r\nContent-Length: 2\n\r\nok"),
        BadResponse,
        False,
        id="bare-lf-in-header-line",
    ),
    pytest.param(
        send(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\nok"),
        BadResponse,
        False,
        id="bare-lf-ending-head",
    ),
    pytest.param(
        send(head(b"X-Note: one", b" two", b"Content-Length: 2") + b"ok"),
        BadResponse,
        False,
        id="folded-header-line",
    ),
    pytest.param(
        send(head(b"Content-Length : 2") + b"ok"),
        BadResponse,
        False,
        id="space-before-colon",
    ),
    # status lines
    pytest.param(
        send(head(b"Upgrade: websocket", b"Connection: Upgrade", status=b"101 Switching")),
        BadResponse,
        False,
        id="101-switching-protocols",
    ),
    pytest.param(
        send(head(status=b"101 Switching Protocols") + OK),
        BadResponse,
        False,
        id="101-then-answer",
    ),
    pytest.param(
        send(head(b"Content-Length: 2", status=b"150 Odd") + b"ok" + OK),
        BadResponse,
        False,
        id="interim-answer-with-body",
    ),
    pytest.param(send(head(status=b"20 OK") + b"ok"), BadResponse, False, id="two-digit-status"),
    pytest.param(
        send(head(b"Content-Length: 2", status=b"600 Beyond") + b"ok"),
        BadResponse,
        False,
        id="status-600",
    ),
    pytest.param(
        send(head(b"Content-Length: 2", status=b"099 Below") + b"ok"),
        BadResponse,
        False,
        id="status-099",
    ),
    pytest.param(
        send(b"HTTP/0.9 200 OK\r\nContent-Length: 2\r\n\r\nok"),
        BadResponse,
        False,
        id="http-0.9",
    ),
    # sizes
    pytest.param(
        send(head(b"X-Big: " + b"a" * MAX_HEAD_BYTES, b"Content-Length: 2") + b"ok"),
        BadResponse,
        False,
        id="header-block-over-64-kib",
    ),
    pytest.param(
        send(head(b"X-Big: " + b"a" * (MAX_HEAD_BYTES - 1024), b"Content-Length: 2") + b"ok"),
        OK_ANSWER,
        True,
        id="header-block-just-under-64-kib",
    ),
    pytest.param(
        send(head(b"Content-Length: %d" % len(BIG)) + BIG),
        Answer(200, KEPT, None),
        False,
        id="content-length-body-over-max-body-is-cut",
    ),
    pytest.param(
        send(head(b"Content-Length: 1000000000") + BIG),
        Answer(200, KEPT, None),
        False,
        id="huge-content-length-answered-without-waiting",
    ),
    pytest.param(
        send(head(b"Transfer-Encoding: chunked") + chunked(BIG, 4096)),
        Answer(200, KEPT, None),
        False,
        id="chunked-body-over-max-body-is-cut",
    ),
    pytest.param(
        send(head() + BIG),
        Answer(200, KEPT, None),
        False,
        id="body-until-close-over-max-body-is-cut",
    ),
    pytest.param(
        send(head(b"Content-Length: %d" % MAX_BODY_BYTES) + KEPT),
        Answer(200, KEPT, None),
        True,
        id="body-of-exactly-max-body-is-kept",
    ),
    # answers that are fine, for contrast
    pytest.param(
        send(head(status=b"103 Early Hints") + OK), OK_ANSWER, True, id="early-hints-skipped"
    ),
    pytest.param(
        send(b"HTTP/1.0 200 OK\r\nConnection: keep-alive\r\nContent-Length: 2\r\n\r\nok"),
        OK_ANSWER,
        True,
        id="http-1.0-keep-alive",
    ),
    pytest.param(
        send(head(b"Connection: close", b"Content-Length: 2") + b"ok"),
        OK_ANSWER,
        False,
        id="connection-close",
    ),
]


@pytest.mark.parametrize(("reply", "outcome", "kept"), HOSTILE)
@pytest.mark.slow
async def test_hostile_upstream_is_refused_and_its_connection_not_reused(
    start_server, client, reply, outcome, kept
):
    server = await start_server(reply)  # then answers OK to every request
    # Within the client's own timeout: an answer it waited out would raise TimeoutError.
    if isinstance(outcome, Answer):
        assert await fetch(client, server.url()) == outcome
    else:
        with pytest.raises(outcome):
            await fetch(client, server.url())
    first = server.accepted[0]
    first.go.set()
    await until(first.replied)  # everything the upstream meant to send is sent
    # Whatever the first connection sent besides, the next get reads its own answer.
    assert await fetch(client, server.url()) == OK_ANSWER
    if kept:
        assert len(server.accepted) == 1
    else:
        await until(first.client_closed)
        assert len(server.accepted) == 2
        assert len(first.requests) == 1


def idle_sockets(client: UpstreamClient) -> list[int]:
    """The file descriptors of the client's idle connections (its private pool)."""
    return [
        connection._transport.get_extra_info("socket").fileno()
        for connections in client._idle.values()
        for connection in connections
    ]


async def test_bytes_waiting_unread_on_an_idle_connection_stop_its_reuse(start_server, client):
    server = await start_server()
    assert await fetch(client, server.url()) == OK_ANSWER
    [idle] = idle_sockets(client)
    server.accepted[0].writer.write(STALE)  # sent at once: nothing else is queued
    # Block until the bytes are in the client's socket without running the event loop, so
    # the client has not read them: only its check before reuse can see them.
    readable, _, _ = select.select([idle], [], [], GUARD)
    assert readable
    assert await fetch(client, server.url()) == OK_ANSWER
    assert len(server.accepted) == 2
    await until(server.accepted[0].client_closed)


async def test_chunked_body_in_many_small_pieces_is_read_whole(start_server, client):
    body = bytes(range(256)) * 240  # 60 KiB
    # 100-byte chunks sent 1 KiB at a time: chunk sizes and data split across reads.
    server = await start_server(
        send_in_pieces(head(b"Transfer-Encoding: chunked") + chunked(body, 100), 1024)
    )
    assert await fetch(client, server.url()) == Answer(200, body, None)
    assert await fetch(client, server.url()) == OK_ANSWER
    assert len(server.accepted) == 1


@pytest.mark.slow
async def test_waiting_for_a_free_connection_counts_in_the_timeout(start_server):
    server = await start_server(send_then_stall())
    client = UpstreamClient(connections_per_host=1)
    holder = asyncio.create_task(client.get(server.url(), {}, 60))
    try:
        await until((await server.connection(0)).asked)  # the only connection is taken
        waiter = asyncio.create_task(client.get(server.url(), {}, 0.2))
        done, _ = await asyncio.wait({waiter}, timeout=GUARD)
        assert waiter in done, "the second get waited for a connection past its timeout"
        assert isinstance(waiter.exception(), TimeoutError)
        assert not holder.done()  # it never had the connection
        assert len(server.accepted) == 1
    finally:
        holder.cancel()
        await asyncio.gather(holder, return_exceptions=True)
        await client.close()


async def test_get_without_keep_alive_asks_to_close_and_uses_a_new_connection(start_server, client):
    server = await start_server()  # would keep connections open
    for _ in range(3):
        assert await fetch(client, server.url(), keep_alive=False) == OK_ANSWER
    assert len(server.accepted) == 3
    for connection in server.accepted:
        _, fields = request_head(connection.requests[0])
        assert ("Connection", "close") in fields
        await until(connection.client_closed)


@pytest.mark.parametrize(
    ("fields", "key"),
    [
        pytest.param([b"X-Idempotency-Key: 7f3a-01"], "7f3a-01", id="echoed"),
        pytest.param([b"x-idempotency-key:  7f3a-01 "], "7f3a-01", id="any-case-trimmed"),
        pytest.param([], None, id="absent"),
        pytest.param(
            [b"X-Idempotency-Key: a", b"X-Idempotency-Key: b"], "a, b", id="twice-both-kept"
        ),
        pytest.param([b"X-Idempotency-Key: caf\xe9"], "caf\xe9", id="latin-1"),
    ],
)
async def test_echoed_idempotency_key_is_returned(start_server, client, fields, key):
    server = await start_server(send(head(*fields, b"Content-Length: 2") + b"ok"))
    answer = await fetch(client, server.url(), {"X-Idempotency-Key": "7f3a-01"})
    assert answer == Answer(200, b"ok", None, key)


# --- close ---------------------------------------------------------------------------------


async def test_close_closes_idle_connections(start_server, client):
    server = await start_server(default=answer_after(0.05))
    # Two gets at once need two connections, both idle afterwards.
    await asyncio.gather(fetch(client, server.url()), fetch(client, server.url()))
    assert len(server.accepted) == 2
    assert not any(connection.client_closed.is_set() for connection in server.accepted)
    await client.close()
    for connection in server.accepted:
        await until(connection.client_closed)


@pytest.mark.slow
async def test_connection_in_use_during_close_is_closed_after_its_answer(start_server, client):
    server = await start_server(answer_after(0.2))
    pending = asyncio.ensure_future(fetch(client, server.url()))
    await until((await server.connection(0)).asked)  # the request is out
    await client.close()
    assert await pending == Answer(200, b"ok", None)
    await until(server.accepted[0].client_closed)
