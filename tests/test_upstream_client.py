"""The lean upstream client against raw loopback servers that write exact response bytes.

Each server reads request heads and answers with bytes a test chooses, so framing, reuse and
failure handling are checked byte for byte; it counts the connections it accepts and notes when
the client closes one.
"""

from __future__ import annotations

import asyncio
import base64
import socket
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from yarl import URL

from gateway.upstream_client import (
    MAX_BODY_BYTES,
    Answer,
    BadResponse,
    UpstreamClient,
    UpstreamConnectionError,
)

TIMEOUT = 2.0  # the client's own timeout for one get, unless a test says otherwise
GUARD = 5.0  # outer bound on every wait, so a hang fails the test instead of stalling it
REPO = Path(__file__).resolve().parent.parent

OK = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"


@dataclass
class Accepted:
    """One connection the server accepted."""

    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter
    requests: list[bytes] = field(default_factory=list)
    client_closed: asyncio.Event = field(default_factory=asyncio.Event)
    server_closed: asyncio.Event = field(default_factory=asyncio.Event)

    def __repr__(self) -> str:  # short, for assertion messages
        return f"<connection with {len(self.requests)} request(s)>"


# What the server does with one request it has read.
Reply = Callable[[Accepted], Awaitable[None]]


def send(data: bytes) -> Reply:
    """Write the answer and keep the connection open for the next request."""

    async def reply(connection: Accepted) -> None:
        connection.writer.write(data)
        await connection.writer.drain()

    return reply


def send_and_close(data: bytes) -> Reply:
    """Write the answer, then close the connection (the body may be framed by that)."""

    async def reply(connection: Accepted) -> None:
        connection.writer.write(data)
        await connection.writer.drain()
        connection.writer.close()

    return reply


def send_and_half_close(data: bytes) -> Reply:
    """Write the answer, shut down the sending side and wait for the client to close."""

    async def reply(connection: Accepted) -> None:
        connection.writer.write(data)
        connection.writer.write_eof()
        await connection.reader.read()
        connection.client_closed.set()
        connection.writer.close()

    return reply


def trickle(data: bytes, then: str = "keep") -> Reply:
    """Write the answer one byte at a time with pauses; `then` is "keep", "close" or "half"."""

    async def reply(connection: Accepted) -> None:
        for index in range(len(data)):
            connection.writer.write(data[index : index + 1])
            await connection.writer.drain()
            await asyncio.sleep(0.001)
        if then == "close":
            connection.writer.close()
        elif then == "half":
            connection.writer.write_eof()
            await connection.reader.read()
            connection.client_closed.set()
            connection.writer.close()

    return reply


def close_without_answer() -> Reply:
    async def reply(connection: Accepted) -> None:
        connection.writer.close()

    return reply


def send_then_stall(data: bytes = b"") -> Reply:
    """Write `data` (perhaps nothing) and never finish the answer; read until the client quits."""

    async def reply(connection: Accepted) -> None:
        connection.writer.write(data)
        await connection.writer.drain()
        await connection.reader.read()

    return reply


def answer_after(seconds: float, data: bytes = OK) -> Reply:
    async def reply(connection: Accepted) -> None:
        await asyncio.sleep(seconds)
        connection.writer.write(data)
        await connection.writer.drain()

    return reply


class RawServer:
    """asyncio.start_server on loopback; replies follow a script, then a default."""

    def __init__(self, host: str, replies: list[Reply], default: Reply) -> None:
        self.host = host
        self.port = 0
        self.accepted: list[Accepted] = []
        self._replies = replies
        self._default = default
        self._tasks: set[asyncio.Task[None]] = set()
        self._server: asyncio.Server | None = None

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._serve, self.host, 0)
        self.port = self._server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        assert self._server is not None
        self._server.close()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self._server.wait_closed()

    def url(self, path_qs: str = "/cb") -> URL:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return URL(f"http://{host}:{self.port}{path_qs}", encoded=True)

    @property
    def requests(self) -> list[bytes]:
        return [request for connection in self.accepted for request in connection.requests]

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)  # type: ignore[arg-type]
        connection = Accepted(reader, writer)
        self.accepted.append(connection)
        try:
            while not writer.is_closing():
                try:
                    head = await reader.readuntil(b"\r\n\r\n")
                except (asyncio.IncompleteReadError, ConnectionError):
                    if not writer.is_closing():
                        connection.client_closed.set()
                    break
                connection.requests.append(head)
                reply = self._replies.pop(0) if self._replies else self._default
                try:
                    await reply(connection)
                except ConnectionError:  # reset by the client while answering
                    connection.client_closed.set()
                    break
        finally:
            writer.close()
            connection.server_closed.set()


ServerFactory = Callable[..., Awaitable[RawServer]]


@pytest.fixture
async def start_server() -> AsyncIterator[ServerFactory]:
    servers: list[RawServer] = []

    async def start(
        *replies: Reply, default: Reply | None = None, host: str = "127.0.0.1"
    ) -> RawServer:
        server = RawServer(host, list(replies), default or send(OK))
        await server.start()
        servers.append(server)
        return server

    yield start
    for server in servers:
        await server.stop()


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
) -> Answer:
    return await asyncio.wait_for(client.get(url, headers or {}, timeout), timeout + GUARD)


async def until(event: asyncio.Event) -> None:
    await asyncio.wait_for(event.wait(), GUARD)


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
    pytest.param(
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Length: 99\r\n\r\n"
        b"3\r\nabc\r\n0\r\n\r\n",
        "keep",
        b"abc",
        id="chunked-wins-over-content-length",
    ),
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
    await asyncio.sleep(0.05)  # the close has reached the client
    assert await fetch(client, server.url()) == Answer(200, b"ok", None)
    assert len(server.accepted) == 2


async def test_idle_connection_closed_as_next_request_is_sent_is_retried_on_new_one(
    start_server, client
):
    # The keep-alive race: the upstream drops an idle connection just as the client reuses it
    # (the request is written before the close is seen). A GET is idempotent and nothing was
    # answered, so one retry on a fresh connection is safe; aiohttp's client does it.
    server = await start_server()
    assert await fetch(client, server.url()) == Answer(200, b"ok", None)
    server.accepted[0].writer.transport.abort()  # takes effect at the next loop iteration
    assert await fetch(client, server.url()) == Answer(200, b"ok", None)
    assert len(server.accepted) == 2


async def test_reused_connection_dropped_without_answer_is_retried_at_most_once(
    start_server, client
):
    server = await start_server(send(OK), default=close_without_answer())
    assert await fetch(client, server.url()) == Answer(200, b"ok", None)
    with pytest.raises(UpstreamConnectionError):
        await fetch(client, server.url())
    assert len(server.accepted) <= 2
    assert len(server.requests) == len(server.accepted) + 1


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
        pytest.param(
            send_and_close(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nshort"),
            id="body-shorter-than-length",
        ),
        pytest.param(
            send_and_close(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\n"),
            id="chunked-without-last-chunk",
        ),
    ],
)
async def test_close_before_answer_is_complete_is_connection_error(start_server, client, reply):
    server = await start_server(reply)
    started = time.monotonic()
    with pytest.raises(UpstreamConnectionError):
        await fetch(client, server.url())
    assert time.monotonic() - started < TIMEOUT / 2  # noticed at the close, not at the timeout


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
            f"HTTP/1.1 200 OK\r\nContent-Length: {MAX_BODY_BYTES + 1}\r\n\r\n".encode(),
            id="length-above-limit",
        ),
        pytest.param(
            b"HTTP/1.1 200 OK\r\nX-Big: " + b"a" * (64 * 1024 + 100),
            id="head-over-64-kib-without-end",
        ),
        pytest.param(
            b"HTTP/1.1 200 OK\r\n\r\n" + b"a" * (MAX_BODY_BYTES + 128 * 1024),
            id="unframed-body-over-limit",
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
from gateway.upstream_client import UpstreamClient

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


@pytest.mark.parametrize(
    "size_line",
    [
        pytest.param(b"zz", id="not-hex"),
        pytest.param(b"", id="empty"),
        pytest.param(b";x=y", id="extension-without-size"),
        pytest.param(b"-7", id="negative"),
    ],
)
async def test_bad_chunk_size_is_bad_response(start_server, size_line):
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
    assert output.decode().strip() == "BadResponse"


@pytest.mark.parametrize(
    "slow",
    [
        pytest.param(send_then_stall(), id="no-answer"),
        pytest.param(
            send_then_stall(b"HTTP/1.1 200 OK\r\nContent-Length: 9\r\n\r\npart"), id="half"
        ),
    ],
)
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
            send(f"HTTP/1.1 200 OK\r\nContent-Length: {MAX_BODY_BYTES + 1}\r\n\r\n".encode()),
            BadResponse,
            id="length-above-limit",
        ),
    ],
)
async def test_client_answers_the_next_get_after_an_error(start_server, client, failing, error):
    server = await start_server(failing, send(OK))
    with pytest.raises(error):
        await fetch(client, server.url())
    assert await fetch(client, server.url()) == Answer(200, b"ok", None)
    assert len(server.accepted) == 2  # the failed connection was not reused


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


async def test_connection_in_use_during_close_is_closed_after_its_answer(start_server, client):
    server = await start_server(answer_after(0.2))
    pending = asyncio.ensure_future(fetch(client, server.url()))
    await asyncio.sleep(0.05)  # the request is out
    await client.close()
    assert await pending == Answer(200, b"ok", None)
    await until(server.accepted[0].client_closed)
